from pingforward.cli import main

raise SystemExit(main())
