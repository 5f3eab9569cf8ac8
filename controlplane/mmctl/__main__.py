import sys

from controlplane.mmctl.main import main

sys.exit(main())
