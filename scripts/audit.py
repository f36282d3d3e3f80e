"""Audit the installed environment with pip-audit: fail on any known vulnerability.

When the vulnerability service cannot be reached (an offline machine), say so and pass:
an audit that could not run is reported, never mistaken for a clean one.
"""

from __future__ import annotations

import json
import subprocess
import sys


def main() -> int:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip_audit",
            "--progress-spinner",
            "off",
            "--format",
            "json",
            "--skip-editable",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"audit: pip-audit could not run ({reason}); NOT audited")
        return 0
    packages = report.get("dependencies", [])
    vulnerable = [p for p in packages if p.get("vulns")]
    for package in vulnerable:
        ids = ", ".join(v["id"] for v in package["vulns"])
        print(f"audit: {package['name']} {package['version']}: {ids}")
    print(f"audit: {len(packages)} packages, {len(vulnerable)} with known vulnerabilities")
    return 1 if vulnerable else 0


if __name__ == "__main__":
    sys.exit(main())
