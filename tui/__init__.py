"""waylay dashboard (Textual). It talks to agents only through waylay.core.client.session."""
