# Python 2.7 External Method (instance Extensions/), called over HTTP as the Zope
# root's admin: the fixture's side door into a running portal. It does what an
# operator does through Plone's forms (add LUC Scenarios, set the LUC settings)
# and reads what no public view shows (every job's runstatus), in one request of
# a few milliseconds instead of a `zopectl run` of several seconds.
import json

from leam.luc.interfaces import IModel
from plone import api
from plone.registry.interfaces import IRegistry
from zope.component import getUtility
from zope.component.hooks import setSite

REPO = "leam.luc.interfaces.settings.ILUCSettings.scenario_repo"
CMD = "leam.luc.interfaces.settings.ILUCSettings.scenario_cmd"


def _jobs(site):
    brains = site.portal_catalog(object_provides=IModel.__identifier__, sort_on="created")
    return [b.getObject() for b in brains]


def _queue(site, form):
    made = []
    for job_id in [i for i in form.get("ids", "").split(",") if i]:
        job = api.content.create(container=site, type="LUC Scenario", id=job_id, title=job_id)
        job.runstatus = "queued"
        job.reindexObject()
        made.append({"id": job.getId(), "url": job.absolute_url()})
    return made


def _settings(form):
    # The registry itself: plone.api refuses None, which is what "unset" is.
    registry = getUtility(IRegistry)
    for name, key in ((REPO, "repo"), (CMD, "cmd")):
        value = form.get(key)
        registry[name] = value.decode("utf-8") if value else None
    return {"repo": registry[REPO], "cmd": registry[CMD]}


def dispatch(self, op):
    site = self.leam
    setSite(site)
    form = self.REQUEST.form
    if op == "queue":
        result = _queue(site, form)
    elif op == "status":
        result = [{"id": j.getId(), "runstatus": j.runstatus} for j in _jobs(site)]
    elif op == "settings":
        result = _settings(form)
    else:
        raise ValueError("unknown op %r" % op)
    self.REQUEST.RESPONSE.setHeader("Content-Type", "application/json")
    return json.dumps(result)
