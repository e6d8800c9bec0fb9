"""Studies of a tokenizer that train and measure it: the floor above :mod:`drorae.tokenizer` and
:mod:`drorae.evaluation`, which both of them need and neither imports.

- :mod:`.sweeps`: ``drorae scaling`` / ``drorae ablate`` (train phase 2 per point, then ``evaluate`` it);
- :mod:`.analysis`: ``drorae analyze`` (layer probes, spectra, router maps) and the figures the sweeps draw.
"""
