"""``ReveGalleryPlugin``: the "Reve gallery" in the Airflow UI's Browse menu and a "Reve media" tab.

Registered through the ``airflow.plugins`` entry point (``pyproject.toml``) and *only* there:
Airflow 3.3 also loads the plugins a provider lists in its provider info, but only with
``[core] lazy_discover_providers = False``, and a plugin found both ways is refused the second
time and reported as a plugin import error. One registration loads it exactly once, whatever
that setting says.

Every Airflow process imports this module when it loads plugins (scheduler, workers,
triggerer...). Only the API server needs the web app, so it is built on first use of
:attr:`ReveGalleryPlugin.fastapi_apps`; elsewhere importing this module costs a class definition.
The app itself is the package :mod:`airflow_provider_reve.plugins.app` (routes, security, params,
queries, rendering, media), in the shape of Airflow's edge3 provider.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from airflow.plugins_manager import AirflowPlugin

__all__ = ["GALLERY_VIEW", "MEDIA_TAB", "URL_PREFIX", "ReveGalleryPlugin", "gallery_app"]

URL_PREFIX = "/reve"

# Relative hrefs: the UI resolves them against its <base href>, so a deployment under a
# sub-path ([api] base_url = https://host/airflow/) works too.
GALLERY_VIEW = {
    "name": "Reve gallery",
    "href": "reve/gallery",
    "destination": "nav",
    "category": "browse",
    "url_route": "reve-gallery",
}
# The UI replaces the placeholders; {MAP_INDEX} stays as it is for a task that is not mapped,
# and the page then shows every map index.
MEDIA_TAB = {
    "name": "Reve media",
    "href": "reve/task-instance?dag_id={DAG_ID}&run_id={RUN_ID}&task_id={TASK_ID}&map_index={MAP_INDEX}",
    "destination": "task_instance",
    "url_route": "reve-media",
}


@cache
def gallery_app() -> Any:
    from airflow_provider_reve.plugins.app import create_app

    return create_app()


class ReveGalleryPlugin(AirflowPlugin):
    """The Reve gallery: generated media, prompts and credits, for the DAGs a user may read.

    .. seealso::
        The how-to guide: :ref:`howto/gallery`.
    """

    name = "reve_gallery"
    external_views = [GALLERY_VIEW, MEDIA_TAB]

    @property
    def fastapi_apps(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return [{"app": gallery_app(), "url_prefix": URL_PREFIX, "name": "Reve gallery"}]
