"""How each vendor's scanner images the phantom's anatomy: the acquisition model of the phantom.

The four styles differ in the knobs that separate the M&Ms-1 vendors (Campello et al., IEEE TMI 2021): stored
intensity range and grey-level mapping, blood–myocardium contrast, a smooth multiplicative coil-sensitivity bias
field, noise level, acquired in-plane resolution (coarser along the phase-encoding rows) and the reconstruction
filter — k-space truncated without apodisation rings at edges (Gibbs). Noise is complex Gaussian added in k-space,
so the magnitude image has Rician statistics (Gudbjartsson & Patz, MRM 1995) and the grain of the acquired
resolution. The figures are illustrative, chosen to give the kind of spread seen between vendors, not measured.

Everything is expressed in millimetres, so the same scan rendered on a fine native grid or on a coarse
heart-centred grid keeps its resolution, noise per unit area and bias field.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft


@dataclass(frozen=True)
class VendorStyle:
    scale: float                 # stored value of unbiased blood pool
    gamma: float                 # grey-level mapping exponent applied by the reconstruction
    contrast: float              # blood / myocardium signal ratio
    fat: float                   # fat signal relative to blood
    noise: float                 # noise std relative to blood on pixels finer than the acquired resolution
    resolution_mm: float         # acquired resolution along the columns (frequency encoding)
    phase_ratio: float           # rows (phase encoding) resolution / column resolution
    bias: float                  # std of the log bias-field polynomial coefficients
    ringing: float               # probability that k-space is truncated without apodisation
    pixel_mm: tuple[float, float]  # range of reconstructed (native) pixel sizes


VENDOR_STYLES: dict[str, VendorStyle] = {
    "A": VendorStyle(scale=650, gamma=1.00, contrast=3.4, fat=0.90, noise=0.030, resolution_mm=1.55,
                     phase_ratio=1.15, bias=0.10, ringing=0.35, pixel_mm=(1.25, 1.55)),   # Siemens
    "B": VendorStyle(scale=2600, gamma=0.80, contrast=2.9, fat=0.80, noise=0.022, resolution_mm=1.65,
                     phase_ratio=1.30, bias=0.22, ringing=0.15, pixel_mm=(1.10, 1.40)),   # Philips
    "C": VendorStyle(scale=240, gamma=1.30, contrast=2.5, fat=0.98, noise=0.042, resolution_mm=2.00,
                     phase_ratio=1.10, bias=0.16, ringing=0.50, pixel_mm=(1.40, 1.75)),   # GE
    "D": VendorStyle(scale=1100, gamma=0.90, contrast=2.8, fat=0.85, noise=0.040, resolution_mm=1.75,
                     phase_ratio=1.20, bias=0.13, ringing=0.25, pixel_mm=(1.00, 1.30)),   # Canon
}


@dataclass(frozen=True)
class Acquisition:
    """One patient's scan: the vendor style with this patient's settings and coil placement."""

    vendor: str
    scale: float
    gamma: float
    contrast: float
    fat: float
    noise: float
    resolution_rows: float
    resolution_cols: float
    ringing: bool
    bias_coeffs: np.ndarray      # log bias field: x, y, x², xy, y², z
    pixel_mm: float              # native reconstructed pixel size


def sample_acquisition(vendor: str, rng: np.random.Generator) -> Acquisition:
    style = VENDOR_STYLES[vendor]
    res = style.resolution_mm * rng.uniform(0.9, 1.12)
    coeffs = rng.normal(0.0, style.bias, 6)
    coeffs[1] -= style.bias  # receive coils lie on the chest: anterior tissue brighter
    return Acquisition(
        vendor=vendor, scale=style.scale * rng.uniform(0.8, 1.25), gamma=style.gamma * rng.uniform(0.95, 1.05),
        contrast=style.contrast * rng.uniform(0.9, 1.1), fat=style.fat * rng.uniform(0.92, 1.05),
        noise=style.noise * rng.uniform(0.7, 1.4), resolution_rows=res * style.phase_ratio, resolution_cols=res,
        ringing=bool(rng.random() < style.ringing), bias_coeffs=coeffs, pixel_mm=float(rng.uniform(*style.pixel_mm)))


def _window_1d(freqs: np.ndarray, resolution: float, ringing: bool) -> np.ndarray:
    """k-space weighting along one axis (freqs in cycles/mm) for an acquired ``resolution`` in mm."""
    if ringing:  # truncation at the acquired matrix edge, barely apodised: sinc side lobes ring at edges
        return (np.abs(freqs) <= 0.5 / resolution) * np.exp(-((freqs * resolution) ** 2))
    sigma = resolution / 2.355  # Gaussian point-spread function with FWHM = resolution
    return np.exp(-2.0 * (np.pi * sigma * freqs) ** 2)


def _window_energy(resolution: float, ringing: bool) -> float:
    """∫ W(f)² df over all frequencies: relates k-space noise density to image noise on a fine grid."""
    f = np.linspace(-2.0, 2.0, 16001)
    return float(np.sum(_window_1d(f, resolution, ringing) ** 2) * (f[1] - f[0]))


def bias_field(acq: Acquisition, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """exp of a second-order polynomial in patient millimetres (x, y: (H, W); z: (B,)) → (B, H, W)."""
    u, v, w = x / 150.0, y / 150.0, (z[:, None, None] - 40.0) / 100.0
    c = acq.bias_coeffs
    return np.exp(c[0] * u + c[1] * v + c[2] * u * u + c[3] * u * v + c[4] * v * v + c[5] * w).astype(np.float32)


def acquire(signal: np.ndarray, x: np.ndarray, y: np.ndarray, z: np.ndarray, pixel_mm: float, acq: Acquisition,
            rng: np.random.Generator) -> np.ndarray:
    """Stored scanner image of a (B, H, W) relative signal (blood = 1) sampled on a square grid of ``pixel_mm``.

    x, y: (H, W) patient-frame coordinates of the pixel centres; z: (B,) slice positions in mm.
    """
    b, h, w = signal.shape
    obj = signal * bias_field(acq, x, y, z)
    # complex white noise with a fixed density in k-space: after the window W its std on a fine grid is
    # sigma * pixel_mm * sqrt(∫∫ W²) = acq.noise; on pixels coarser than the acquired resolution the grid's
    # Nyquist band cuts W and less noise remains, as averaging would leave
    energy = _window_energy(acq.resolution_rows, acq.ringing) * _window_energy(acq.resolution_cols, acq.ringing)
    sigma = acq.noise / (pixel_mm * np.sqrt(energy))
    noise = rng.standard_normal((2, b, h, w), dtype=np.float32)
    data = obj.astype(np.complex64) + sigma * (noise[0] + 1j * noise[1]).astype(np.complex64)
    window = (_window_1d(np.fft.fftfreq(h, pixel_mm), acq.resolution_rows, acq.ringing)[:, None]
              * _window_1d(np.fft.fftfreq(w, pixel_mm), acq.resolution_cols, acq.ringing)[None, :])
    kspace = scipy.fft.fft2(data, axes=(-2, -1), workers=1)
    kspace *= window.astype(np.float32)
    magnitude = np.abs(scipy.fft.ifft2(kspace, axes=(-2, -1), workers=1))
    stored = acq.scale * np.power(magnitude, acq.gamma, dtype=np.float32)
    return np.rint(stored).astype(np.float32)
