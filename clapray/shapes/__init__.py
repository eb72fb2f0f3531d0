"""The shapes world: a generated image domain, its benchmarks and the mini-CLIP pretrained on it.

One concern per module:

* :mod:`~clapray.shapes.attributes`: colours, shapes, patterns, the canonical classes and the
  per-image attributes, sampled deterministically;
* :mod:`~clapray.shapes.render`: the deterministic renderer (attributes -> RGB image);
* :mod:`~clapray.shapes.benchmark`: the ``shapes`` and ``shapes_cl`` benchmarks (registered with
  :mod:`clapray.data` on import) and the split of the classes held out from pretraining;
* :mod:`~clapray.shapes.captions`: captions composed from image attributes;
* :mod:`~clapray.shapes.pool`: the pretraining classes and the pre-rendered image-caption pool;
* :mod:`~clapray.shapes.pretrain`: pretraining settings and the contrastive training loop;
* :mod:`~clapray.shapes.mini_clip`: the checkpoint cache (``ensure_mini_clip``, ``load_mini_clip``);
* :mod:`~clapray.shapes.evaluate`: feature quality (zero-shot, nearest-class-mean, linear probe).

The package itself imports nothing, so the torch-free data layer can import the benchmark module alone.
"""
