"""Continuous adaptation: releases (content-addressed versions with signed provenance, aliases
whose every move is recorded), rollouts (canary and shadow steps, analysis, approval, abort),
and the record of what served when."""
