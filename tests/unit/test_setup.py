"""What scripts/setup.sh leaves in .venv (CI runs the suite in the .venv it sets up from a clean clone)."""

import subprocess
import sys


def test_opencv_is_the_headless_build_a_server_without_libgl_can_import() -> None:
    """transparent-background pulls in opencv-python, whose cv2 needs libGL: it won the shared cv2/ files, so
    `import cv2` failed on a server without libGL (shown with libGL.so.1 hidden: "file too short")."""
    build = subprocess.run(
        [sys.executable, "-c", "import cv2; print(cv2.getBuildInformation())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    gui = next(line for line in build.splitlines() if line.strip().startswith("GUI:"))
    assert gui.split(":", 1)[1].strip() == "NONE", gui
