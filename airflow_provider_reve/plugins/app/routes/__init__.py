"""The gallery app's routes: pages (HTML) and media (stored files)."""
