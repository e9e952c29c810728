"""`python -m waylay.agent`: how launchers start the agent inside a namespace."""

from waylay.agent.main import main

raise SystemExit(main())
