"""What the README shows is there: an example image of every effect (made by bench/effects_gallery.py)."""

import re

from serve_app.schemas import Effect
from tests.conftest import ROOT


def test_every_effect_has_an_example_image_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    shown = dict(re.findall(r"!\[(\w+)\]\((docs/effects/[\w.]+)\)", readme))
    for effect in Effect:
        assert effect.value in shown, f"README shows no example of effect {effect.value!r}"
        assert (ROOT / shown[effect.value]).is_file(), shown[effect.value]
    assert (ROOT / shown["photo"]).is_file()
