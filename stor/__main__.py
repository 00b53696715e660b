from stor.cli import main

raise SystemExit(main())
