"""`InOrder`: the steps of a fit, noted in any order, released in step order.

Keras runs `on_train_batch_end` of `async_safe` callbacks in a thread pool
(`concurrent.futures.ThreadPoolExecutor()`, several workers on JAX and
torch), so step 6's call can run before step 5's. A callback that must see
the steps in order (the loss check that names the first step whose loss is
not finite; TensorBoard curves written step after step) notes each step
here and acts on what `note` releases: the steps up to the first one not
noted yet, in order.

Not thread-safe by itself: the callback holds its own lock around `note`
and what it does with the steps released.

Example:
```python
steps = InOrder(done=0)
steps.note(2, "b")  # []: step 1 is not noted yet
steps.note(1, "a")  # [(1, "a"), (2, "b")]
steps.done  # 2
```
"""


class InOrder:
    """Steps noted in any order, released in order (module docstring).

    Args:
        done: int. The last step already done before the first to be noted.
    """

    def __init__(self, done=0):
        self.done = done
        self._ahead = {}  # step: value, noted before an earlier step

    def note(self, step, value=None):
        """Notes `step`; returns [(step, value), ...] of the steps now in
        order after `done` (possibly none), and moves `done` past them."""
        if step <= self.done:
            return []  # a step already released (a resumed epoch's first steps)
        self._ahead[step] = value
        released = []
        while self.done + 1 in self._ahead:
            self.done += 1
            released.append((self.done, self._ahead.pop(self.done)))
        return released

    def pending(self):
        """The values noted but not released (after a step not noted yet),
        in step order."""
        return [self._ahead[step] for step in sorted(self._ahead)]
