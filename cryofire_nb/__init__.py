"""cryofire_nb: ab initio heterogeneous cryo-EM reconstruction with amortised inference.

Conventions shared with cryoDRGN, RELION and cryoSPARC (stated once here, and in the
docstrings of the functions that depend on them):

* Volumes are indexed ``[z, y, x]``, images ``[y, x]``; the centre of an even box of
  size ``d`` is index ``d // 2``.
* A rotation ``R`` (3x3) maps a volume to an image by the Fourier slice at
  ``[kx, ky, 0] @ R`` (row vectors). In real space pixel (x, y) integrates the volume
  along z at points ``[x, y, z] @ R``; an atom at ``a`` lands at ``(R @ a)[:2]``.
* Translations in pose files are fractions of the box; a stored particle equals the
  centred projection translated by **minus** the stored shift.
* Un-inverted images of positive density are ``CTF * projection`` (dark at low
  frequency); RELION/cryoSPARC stacks are usually inverted, which we undo by default.
"""

__version__ = "0.1.0"
