"""Task family ``translation``: multilingual machine translation with an encoder-decoder.

- ``gettext-mt`` (offline): a small Marian trained from scratch on Debian gettext catalogues,
  en->de and en->fr in stage 0, en->es as the new pair.
- ``m2m100`` (paper scale): pretrained M2M100 418M on OPUS-100, the same pairs.

See docs/tasks_translation.md.
"""

from forgetbench.api import hookimpl

from .base import Seq2SeqTask
from .gettext_mt import GettextMTTask
from .opus import M2M100Task

__all__ = ["GettextMTTask", "M2M100Task", "Seq2SeqTask"]


@hookimpl
def forgetbench_register_tasks(register):
    register(GettextMTTask)
    register(M2M100Task)
