# Python 2.7, run by `zopectl run` in the chroot (which binds `app`): the Plone site
# `leam` with leam.luc's profile, the users `poller` (Manager) and `member`, one queued
# scenario, and the fixture's own External Method at the Zope root (outside the site,
# Manager only) that queues jobs, reads their runstatus and sets the two settings over
# HTTP while the server runs. Passwords come from a root-only file, never argv.
from __future__ import print_function

import json
import sys

import transaction
from AccessControl.SecurityManagement import newSecurityManager
from Products.CMFPlone.factory import addPloneSite
from Testing.makerequest import makerequest
from zope.component.hooks import setSite

SITE = "leam"
with open(sys.argv[-1]) as f:
    secrets = json.load(f)
app = makerequest(app)
admin = app.acl_users.getUserById("admin")
newSecurityManager(None, admin.__of__(app.acl_users))

site = addPloneSite(
    app,
    SITE,
    title="LEAM Planning Portal",
    extension_ids=("plonetheme.sunburst:default", "leam.luc:default"),
    setup_content=False,
)
setSite(site)
from plone import api  # noqa: E402 - needs the site hook

assert api.portal.get_tool("portal_quickinstaller").isProductInstalled("leam.luc")
assert "runstatus" in api.portal.get_tool("portal_catalog").indexes()
api.user.create(
    email="poller@example.invalid",
    username="poller",
    password=secrets["poller"],
    roles=("Member", "Manager"),
)
api.user.create(
    email="member@example.invalid",
    username="member",
    password=secrets["member"],
    roles=("Member",),
)
job = api.content.create(container=site, type="LUC Scenario", id="scenario-1", title="Scenario 1")
job.runstatus = "queued"
job.reindexObject()

app.manage_addProduct["ExternalMethod"].manage_addExternalMethod(
    "leam_fixture", "real-portal fixture operations", "leam_fixture", "dispatch"
)
for perm in ("View", "Access contents information"):
    app.leam_fixture.manage_permission(perm, ["Manager"], acquire=0)
transaction.commit()
print("site ready:", job.absolute_url(), job.runstatus)
