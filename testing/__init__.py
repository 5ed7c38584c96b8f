"""The test harness: real parts the tests, the benchmarks and the demo stand on.

Sandbox hosts (``testing.sandbox``), the portal stand-in, a fault proxy, a
real supervisord, ``ansible-playbook`` from Python, and the demo. Part of the
checkout, not of the poller's wheel or sdist.
"""
