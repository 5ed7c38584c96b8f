# Python 2.7, run by `zopectl run` in the chroot: the two LUC settings pop_queue formats
# with {id} and {url}; until they are set, every pop answers 500.
from __future__ import print_function

import json
import sys

import transaction
from plone import api
from zope.component.hooks import setSite

with open(sys.argv[-1]) as f:
    settings = json.load(f)
setSite(app.leam)
for key in ("scenario_repo", "scenario_cmd"):
    api.portal.set_registry_record(
        "leam.luc.interfaces.settings.ILUCSettings." + key, settings[key]
    )
transaction.commit()
print("settings set")
