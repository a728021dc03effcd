"""The claim registry: every published figure as a record in `claims/`, with its label, sources,
measurement context and review date; the rules that check the registry and the docs that cite
it; and the README table and CHANGELOG entries rendered from it."""
