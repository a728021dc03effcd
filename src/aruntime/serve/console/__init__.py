"""The operator console (`/console`): one page, its assets in `static/`, and the JSON it reads."""
