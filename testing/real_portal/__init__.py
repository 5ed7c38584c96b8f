"""The real LEAM portal (leam.luc on Plone 4.3.20 / Zope 2.13.30 / Python 2.7) for tests."""
