"""A path the roles write into configuration files: absolute, of plain characters.

Supervisor program files, systemd units, the poller's command lines and
cloud-init's user data carry such paths unquoted, so the roles' checks
(plugins/filter/validation.py) and the user data's (plugins/filter/
cloud_config.py) take a path only when it is absolute, of letters, digits
and ._+-, without . or .. components and without a trailing slash.
"""

from __future__ import annotations

import re
from typing import Any

PLAIN_PATH = re.compile(r"^(/[A-Za-z0-9_+-][A-Za-z0-9._+-]*)+$")
PLAIN_PATH_TEXT = "an absolute path of letters, digits and ._+- (no . or .. components)"


def is_plain_path(value: Any) -> bool:
    return isinstance(value, str) and bool(PLAIN_PATH.match(value))
