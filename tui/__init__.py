"""waylay dashboard (Textual). It talks to agents only through core.session."""
