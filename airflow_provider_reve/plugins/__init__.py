"""The Reve gallery: an Airflow UI plugin showing what Reve generated (see ``gallery.py``)."""
