"""modelmem's page as a Hugging Face Space (or anywhere): `python app.py` serves it on 0.0.0.0:7860.

The page is the same as `modelmem serve`'s and needs only the standard library, so a Space needs no requirements
file; PORT and HOST override the address (a Space expects 7860).
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))  # run from a checkout, uninstalled

from modelmem.web import serve  # noqa: E402

if __name__ == "__main__":
    serve(host=os.environ.get("HOST", "0.0.0.0"), port=int(os.environ.get("PORT", "7860")),
          announce=lambda url: print(f"modelmem: serving on {url}", file=sys.stderr, flush=True))
