"""Starting the service must not reach the network: transparent-background imports albumentations, which asks PyPI
for a newer version at import unless NO_ALBUMENTATIONS_UPDATE is set (serve_app sets it)."""

import os
import subprocess
import sys

SPY = """
import urllib.request, time
opened = []
real_open = urllib.request.OpenerDirector.open
def spy(self, url, *args, **kwargs):
    opened.append(str(getattr(url, "full_url", url)))
    raise OSError("no network in this test")
urllib.request.OpenerDirector.open = spy
import {module}
time.sleep(1)  # the version check may run in a thread
print(opened)
"""


def opened_urls(module: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    done = subprocess.run(
        [sys.executable, "-c", SPY.format(module=module)], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


def test_importing_the_model_code_opens_no_url() -> None:
    assert opened_urls("serve_app.runtimes.inspyrenet") == "[]"


def test_the_spy_sees_albumentations_check_without_serve_app() -> None:
    """The check above can fail: imported bare, transparent-background's albumentations does ask PyPI."""
    assert "pypi.org" in opened_urls("transparent_background.InSPyReNet")
