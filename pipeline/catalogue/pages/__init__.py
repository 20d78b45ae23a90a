"""Server-rendered pages (Jinja templates + a little CSS) to browse the catalogue."""
