"""`python -m agent`: how launchers start the agent inside a namespace."""

from agent.main import main

raise SystemExit(main())
