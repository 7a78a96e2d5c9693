"""Fast kernels behind the defenses: column sorting, Gram matrices and distances, repeated Krum
selection, coordinate-wise weight estimation (docs/design.md, "Performance").

Each kernel computes a formula that :mod:`tesseract_fl.aggregators.reference` states plainly
(the tests check that the two agree); a defense's own module reads as its formula and calls
these. Nothing here validates its input: the rules' base class applies the hostile-input policy
first (:class:`tesseract_fl.aggregators.base.Defense`).
"""
