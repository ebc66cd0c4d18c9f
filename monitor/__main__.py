from spherewatch.cli import main

raise SystemExit(main())
