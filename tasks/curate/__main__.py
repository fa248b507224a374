"""`python -m tasks.curate`: the curate DVC stage."""

from tasks.curate.run import main

raise SystemExit(main())
