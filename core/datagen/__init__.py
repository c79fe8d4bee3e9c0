"""Dataset generation: the documented recipe at scale, written as the seed layout or as shards.

The pieces, in data-flow order:

- :mod:`~losslab.core.datagen.plan` - what to make (sources, generator, ground truth, layout) and
  the recipe list, checked before any work starts;
- :mod:`~losslab.core.datagen.formats` - file names, encoders and decoders shared by writers and readers;
- :mod:`~losslab.core.datagen.layouts` - the writers: one chunk of recipes in, files out;
- :mod:`~losslab.core.datagen.shards` - the shards writer and its format;
- :mod:`~losslab.core.datagen.resume` - which chunks are complete, so a killed run continues;
- :mod:`~losslab.core.datagen.runner` - worker processes, the progress bar, interruption;
- :mod:`~losslab.core.datagen.stats` - ``lab data stats``.

Readers live in :mod:`losslab.core.storage`.
"""

from losslab.core.datagen.plan import GenerationError, GenerationPlan, InputSpec
from losslab.core.datagen.runner import GenerationInterrupted, GenerationReport, generate

__all__ = [
    "GenerationError",
    "GenerationInterrupted",
    "GenerationPlan",
    "GenerationReport",
    "InputSpec",
    "generate",
]
