"""RELOAD-11: a one-call reload streams (vLLM): layers complete before a late failure keep their new values."""

from loadspec.reference.reload import ReloadSession
from mutants._base import SessionMutant


class StreamingReloadAdapter(SessionMutant):
    name = report_id = "mutant-streaming-reload"
    targets = ("RELOAD-11",)
    suite = ("test_reload.py",)
    session_class = ReloadSession  # streaming: SessionMutant.reload runs it without transactional=True
