"""Cross-request batching: concurrent calls gathered into one block, answered by one call."""

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

Request = TypeVar("Request")
Answer = TypeVar("Answer")


class RequestBatcher(Generic[Request, Answer]):
    """Gathers requests that arrive together and answers them with one blocking call.

    `submit` is awaited by each request. The first request of a batch waits `wait_s` for
    others to join (a batch of `max_size` goes at once); the batch is then answered by
    `answer_batch` in a worker thread, so the event loop keeps accepting requests, and those
    that arrive meanwhile form the next batch. One batch runs at a time: under load, batches
    grow by themselves up to `max_size`.

    `answer_batch(requests)` returns one item per request, in order: an answer, or the
    exception that this request alone must raise. An exception raised by `answer_batch`
    itself fails every request of the batch.
    """

    def __init__(
        self,
        answer_batch: Callable[[list[Request]], list[Answer | BaseException]],
        max_size: int,
        wait_s: float,
    ) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        if wait_s < 0:
            raise ValueError(f"wait_s must be >= 0 seconds, got {wait_s}")
        self._answer_batch = answer_batch
        self.max_size = max_size
        self.wait_s = wait_s
        self._pending: list[tuple[Request, asyncio.Future]] = []
        self._worker: asyncio.Task | None = None
        self.batch_sizes: Counter[int] = Counter()  # batches answered, by size

    async def submit(self, request: Request) -> Answer:
        """Answer `request` within a batch; raises what `answer_batch` gave for it."""
        future = asyncio.get_running_loop().create_future()
        self._pending.append((request, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._pending:
            if len(self._pending) < self.max_size and self.wait_s > 0:
                await asyncio.sleep(self.wait_s)
            batch, self._pending = self._pending[: self.max_size], self._pending[self.max_size :]
            requests = [request for request, _ in batch]
            try:
                answers = await asyncio.to_thread(self._answer_batch, requests)
                if len(answers) != len(batch):
                    raise RuntimeError(
                        f"answer_batch returned {len(answers)} answers for {len(batch)} requests"
                    )
            except Exception as err:
                answers = [err] * len(batch)
            self.batch_sizes[len(batch)] += 1
            logger.debug("answered a batch of %d requests", len(batch))
            for (_, future), answer in zip(batch, answers, strict=True):
                if future.done():  # its caller was cancelled (a timeout)
                    continue
                if isinstance(answer, BaseException):
                    future.set_exception(answer)
                else:
                    future.set_result(answer)
