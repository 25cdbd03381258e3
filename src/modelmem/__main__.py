from modelmem.cli import main

raise SystemExit(main())
