"""``python -m harness.data.synthetic``: write (or confirm) the embedded dataset."""

from harness.data.synthetic.build import main

raise SystemExit(main())
