"""Draw the default OFDM resource grid of ``environments.ofdm.OFDM`` (data, pilots) for docs/channels.md.

    python scripts/plot_resource_grid.py [--out docs/img/ofdm_resource_grid.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(out: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    from calm.files import save_figure
    from environments.ofdm import OFDM

    ch = OFDM(0.5)
    fig = ch._parts["rg"].show()  # Sionna's own drawing: data, pilot and guard elements
    fig.axes[0].set_title(f"OFDM resource grid: {ch.num_ofdm_symbols} OFDM symbols x {ch.fft_size} subcarriers,\n"
                          f"pilots on symbols {list(ch.pilot_symbols)} ({ch.pilot_overhead:.3f} uses per data element)",
                          fontsize=8)
    path = Path(out)
    save_figure(fig, path)
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/img/ofdm_resource_grid.png")
    print(main(parser.parse_args().out))
