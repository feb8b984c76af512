"""kosmos_demo: a UI-free engine, CLI and Gradio app around Microsoft's Kosmos-2."""

DEFAULT_MODEL = "microsoft/kosmos-2-patch14-224"
