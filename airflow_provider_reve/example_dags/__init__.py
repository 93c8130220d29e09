"""The provider's example DAGs, shipped in the wheel so that ``pip install`` users have them.

Nothing imports them unless asked: to load them into a deployment, make this folder part of the
DAGs folder (docs/quickstart.md, "The example DAGs"). ``prompts/`` beside them is read by the
content pipeline.
"""

__all__: list[str] = []
