"""The light half of sam3v: the shared core (``pipeline.core``) and the control plane
(``pipeline.control``). Never imports torch, decord, transformers, av, or the data plane (``workers``)."""
