"""The fonts of the letters model: where they come from and which are distinct enough to be styles.

Every font is a Debian package's file (none is downloaded at run time). `DEBIAN_FONT_PACKAGES` is what a
host must `apt-get install` to re-render the training data; the committed weights and held-out renders do
not need them. `CANDIDATE_FONTS` are the styles considered; fonts that the font classifier confuses are
merged into one style by `train.py` (see `merge_confused_styles` in `judges.py`).

    python3 benchmarks/letters/fonts.py     # prints the apt-get command for the missing packages (exit 1 if any)
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path



@dataclass(frozen=True)
class Font:
    """One candidate style: the name used in captions ("the letter R by <name>") and its font file."""

    name: str
    path: str
    package: str


_SHARE = "/usr/share/fonts"
# In the order of how common such a style is in real text: the data gives font k a frequency
# proportional to 1 / (k + 1) (Zipf's law), so the first fonts dominate i.i.d. samples.
CANDIDATE_FONTS = (
    Font("DejaVu Sans", f"{_SHARE}/truetype/dejavu/DejaVuSans.ttf", "fonts-dejavu-core"),
    Font("Liberation Serif", f"{_SHARE}/truetype/liberation/LiberationSerif-Regular.ttf", "fonts-liberation"),
    Font("Nimbus Mono", f"{_SHARE}/opentype/urw-base35/NimbusMonoPS-Regular.otf", "fonts-urw-base35"),
    Font("Free Sans Bold", f"{_SHARE}/truetype/freefont/FreeSansBold.ttf", "fonts-freefont-ttf"),
    Font("Palatino Italic", f"{_SHARE}/opentype/urw-base35/P052-Italic.otf", "fonts-urw-base35"),
    Font("URW Gothic", f"{_SHARE}/opentype/urw-base35/URWGothic-Book.otf", "fonts-urw-base35"),
    Font("Century Bold", f"{_SHARE}/opentype/urw-base35/C059-Bold.otf", "fonts-urw-base35"),
    Font("Bookman Demi", f"{_SHARE}/opentype/urw-base35/URWBookman-Demi.otf", "fonts-urw-base35"),
    Font("Go Mono", f"{_SHARE}/fonts-go/Go-Mono.ttf", "fonts-go"),
    Font("League Spartan Black", f"{_SHARE}/opentype/league-spartan/LeagueSpartan-Black.otf", "fonts-league-spartan"),
    Font("Nimbus Sans Narrow", f"{_SHARE}/opentype/urw-base35/NimbusSansNarrow-Bold.otf", "fonts-urw-base35"),
    Font("Yanone Kaffeesatz", f"{_SHARE}/opentype/yanone-kaffeesatz/YanoneKaffeesatz-Light.otf",
         "fonts-yanone-kaffeesatz"),
    Font("Comic Neue", f"{_SHARE}/opentype/comic-neue/ComicNeue-Bold.otf", "fonts-comic-neue"),
    Font("Tomson Talks", f"{_SHARE}/truetype/tomsontalks/TomsonTalks.ttf", "fonts-tomsontalks"),
    Font("DKG Handwriting", f"{_SHARE}/truetype/fifthhorseman/dkg.ttf", "fonts-dkg-handwriting"),
    Font("Zapf Chancery", f"{_SHARE}/opentype/urw-base35/Z003-MediumItalic.otf", "fonts-urw-base35"),
    Font("Dancing Script", f"{_SHARE}/opentype/dancingscript/DancingScript-Bold.otf", "fonts-dancingscript"),
    Font("Kristi", f"{_SHARE}/truetype/kristi/Kristi.ttf", "fonts-kristi"),
    Font("Lobster", f"{_SHARE}/opentype/lobster/lobster.otf", "fonts-lobster"),
    Font("Isabella", f"{_SHARE}/truetype/isabella/Isabella.ttf", "fonts-isabella"),
    Font("Blankenburg", f"{_SHARE}/truetype/blankenburg/Blankenburg_UNZ1A.ttf", "fonts-blankenburg"),
    Font("Unifont", f"{_SHARE}/opentype/unifont/unifont.otf", "fonts-unifont"),
    Font("Beteckna", f"{_SHARE}/truetype/beteckna/BetecknaGS.ttf", "fonts-beteckna"),
    Font("Mekanus", f"{_SHARE}/truetype/adf/MekanusADFStd-Regular.otf", "fonts-adf-mekanus"),
    Font("Stay Puft", f"{_SHARE}/truetype/staypuft/StayPuft.ttf", "fonts-staypuft"),
)


DEBIAN_FONT_PACKAGES = tuple(sorted({font.package for font in CANDIDATE_FONTS}))


def missing_font_packages(fonts=CANDIDATE_FONTS) -> list[str]:
    """The Debian packages (sorted, unique) whose font files in `fonts` are not on this machine."""
    return sorted({font.package for font in fonts if not Path(font.path).is_file()})


def install_command(packages) -> str:
    """The shell command (as root) that installs `packages`."""
    return "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends " + \
        " ".join(packages)


def main() -> int:
    missing = missing_font_packages()
    if not missing:
        print("[letters] every font is installed")
        return 0
    print(install_command(missing))
    return 1


if __name__ == "__main__":
    sys.exit(main())
