"""Reading a pickle of plain data without running anything it holds, in bounded memory: an
unpickler that admits only what the feature layouts contain and counts the bytes its arrays
claim before numpy allocates them (RestrictedUnpickler), and the number of values a loaded
structure expands to once its shared references are copied (expanded_values). Both serve
dataloader.read_pickle, which names the file in whatever it refuses."""

import math
import pickle

import numpy as np

from maln.files import size_text


class RefusedPickle(pickle.UnpicklingError):
    """A pickle asked for a name outside RestrictedUnpickler.ALLOWED, or for a call or state the known layouts never hold."""


class TooLarge(pickle.UnpicklingError):
    """A file claims more memory than its size allows; refused before anything that large is allocated."""


class RestrictedUnpickler(pickle._Unpickler):
    """Admits only what the known layouts contain: numpy arrays, dtypes and scalars (as numpy 1
    and 2 write them at pickle protocols 0-5, from Python 2 or 3), sets, and bytes (Python 3
    writes them through _codecs.encode at protocols 0-2, and empty ones as bytes()). Lists,
    tuples, dicts, str, numbers, bool and None need no name. Any other name is refused before
    anything is called.

    It is pickle's Python implementation, so that every call and every state is checked before
    numpy sees it: arrays may claim `budget` bytes in all (numpy allocates a claimed shape before
    it finds the data short), an object array's state holds one item per element (numpy reads
    past a short list), dtypes are plain ones, and nothing constructs a class directly."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
        ("builtins", "set"), ("builtins", "frozenset"), ("__builtin__", "set"), ("__builtin__", "frozenset"),
        ("builtins", "bytes"), ("__builtin__", "bytes"),
    }
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, budget, **options):
        super().__init__(file, **options)
        self.budget = budget    # bytes the arrays built may claim in all
        self.claimed = 0

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise RefusedPickle(f"refused to load '{module}.{name}'")
        if (module, name) == ("_codecs", "encode"):
            return self.latin1_bytes  # never the codec machinery itself (punycode takes time of the square of the text)
        return super().find_class(module, name)

    def latin1_bytes(self, text, encoding="latin1"):
        """What Python 3 writes for bytes at protocols 0-2, _codecs.encode(text, 'latin1'), decoded here:
        latin-1 only (one byte a character, linear time), counted against the budget."""
        if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
            raise RefusedPickle(f"refused to encode {type(text).__name__} text as {encoding!r:.20} (only bytes "
                                f"written as latin-1 text are read)")
        self.claimed += len(text)
        if self.claimed > self.budget:
            raise TooLarge(f"claims {size_text(self.claimed)} of arrays and bytes")
        try:
            return text.encode("latin-1")
        except UnicodeEncodeError:
            raise RefusedPickle("refused bytes written as text outside latin-1") from None

    def claim(self, shape, dtype):
        """Count an array's bytes against the budget before numpy allocates them; -> its number of elements."""
        if not isinstance(shape, tuple) or not all(isinstance(n, int) and n >= 0 for n in shape):
            raise RefusedPickle(f"refused an array of shape {shape!r}")
        count = math.prod(shape)
        self.claimed += count * np.dtype(dtype).itemsize
        if self.claimed > self.budget:
            raise TooLarge(f"claims arrays of {size_text(self.claimed)}")
        return count

    def load_reduce(self):
        arguments = self.stack.pop()
        function = self.stack[-1]
        if not isinstance(arguments, tuple) or function is np.ndarray:
            raise RefusedPickle(f"refused to call {getattr(function, '__name__', function)!r} with {type(arguments).__name__}")
        if getattr(function, "__name__", "") == "_reconstruct":
            if len(arguments) != 3 or arguments[0] is not np.ndarray:
                raise RefusedPickle("refused to reconstruct anything but a plain numpy array")
            self.claim(arguments[1], arguments[2])
        if function is np.dtype and not (arguments and isinstance(arguments[0], str) and len(arguments[0]) <= 16):
            raise RefusedPickle(f"refused a dtype built from {arguments[:1]!r:.60}")
        if function is bytes and arguments:  # bytes(n) would allocate n bytes
            raise RefusedPickle(f"refused bytes{arguments!r:.40}")
        if function in (set, frozenset) and arguments:
            if not isinstance(arguments[0], (list, tuple)):
                raise RefusedPickle(f"refused a set built from a {type(arguments[0]).__name__}")
            self.check_keys(arguments[0], "set")
        self.stack[-1] = function(*arguments)
        if function is np.dtype and (self.stack[-1].fields is not None or self.stack[-1].subdtype is not None):
            raise RefusedPickle(f"refused the dtype {arguments[0]!r}: one with fields or sub-arrays")
    dispatch[pickle.REDUCE[0]] = load_reduce

    MAX_ITEMS = 2 ** 22   # entries of one dict or set: the known layouts hold one per dialogue or utterance
    LARGEST_KEY = 2 ** 60  # int keys below this hash to themselves: none can be made to collide

    def check_keys(self, keys, what, held=0):
        """Keys of a dict (or members of a set) whose hashes cannot be made to collide (a file of colliding
        keys takes time of the square of their number): str, bytes, bool, None and ints of |k| < 2**60;
        at most MAX_ITEMS of them in one container."""
        if held + len(keys) > self.MAX_ITEMS:
            raise RefusedPickle(f"refused a {what} of more than {self.MAX_ITEMS:,} entries")
        for key in keys:
            if isinstance(key, (str, bytes, bool, type(None))):
                continue
            if not (isinstance(key, (int, np.integer)) and -self.LARGEST_KEY < key < self.LARGEST_KEY):
                raise RefusedPickle(f"refused a {what} key of type {type(key).__name__} ({key!r:.40}); "
                                    f"feature files key by text or small numbers")

    def load_setitem(self):
        self.check_keys(self.stack[-2:-1], "dict", len(self.stack[-3]) if isinstance(self.stack[-3], dict) else 0)
        super().load_setitem()
    dispatch[pickle.SETITEM[0]] = load_setitem

    def load_setitems(self):
        items, target = self.stack, self.metastack[-1][-1] if self.metastack and self.metastack[-1] else None
        self.check_keys(items[::2], "dict", len(target) if isinstance(target, dict) else 0)
        super().load_setitems()
    dispatch[pickle.SETITEMS[0]] = load_setitems

    def load_dict(self):
        self.check_keys(self.stack[::2], "dict")
        super().load_dict()
    dispatch[pickle.DICT[0]] = load_dict

    def load_additems(self):
        target = self.metastack[-1][-1] if self.metastack and self.metastack[-1] else None
        self.check_keys(self.stack, "set", len(target) if isinstance(target, (set, frozenset)) else 0)
        super().load_additems()
    dispatch[pickle.ADDITEMS[0]] = load_additems

    def load_frozenset(self):
        self.check_keys(self.stack, "set")
        super().load_frozenset()
    dispatch[pickle.FROZENSET[0]] = load_frozenset

    def load_build(self):
        state, instance = self.stack[-1], self.stack[-2]
        if isinstance(instance, np.ndarray):
            self.check_array_state(state)
        elif isinstance(instance, np.dtype):
            if not isinstance(state, tuple) or any(isinstance(x, (tuple, list, dict)) for x in state):
                raise RefusedPickle("refused a dtype with fields or sub-arrays")
            self.stack[-1] = self.checked_dtype_state(instance, state)
        else:
            raise RefusedPickle(f"refused to set the state of a {type(instance).__name__}")
        super().load_build()
    dispatch[pickle.BUILD[0]] = load_build

    @staticmethod
    def checked_dtype_state(dtype, state):
        """The state a dtype is given, rebuilt from checked parts: only its byte order is taken from the
        file; its size, alignment and flags are those numpy gives a fresh dtype of its type code, so an
        object dtype can never be disguised as one without objects (flags that no longer say it holds
        objects let raw bytes become object pointers: a segfault), nor the reverse."""
        if len(state) not in (8, 9) or state[0] not in (3, 4) or state[1] not in ("<", ">", "|", "=") \
                or any(x is not None for x in (*state[2:5], *state[8:])):
            raise RefusedPickle(f"refused a dtype state of an unknown form {state!r:.80}")
        fresh = np.dtype(dtype.str).newbyteorder(state[1]) if state[1] != "|" else np.dtype(dtype.str)
        return fresh.__reduce__()[2]

    def check_array_state(self, state):
        """numpy's state: ([version,] shape, dtype, is_fortran, data), data the bytes or, for objects, a list."""
        if not isinstance(state, tuple) or len(state) not in (4, 5) or not isinstance(state[-3], np.dtype):
            raise RefusedPickle("refused an array state of an unknown form")
        shape, dtype, _, data = state[-4:]
        count = self.claim(shape, dtype)
        if dtype.hasobject and not (isinstance(data, list) and len(data) == count):
            raise RefusedPickle(f"refused an object array of shape {shape} whose state does not hold {count} items")

    def refuse_instance(self):
        raise RefusedPickle("refused to construct a class instance (NEWOBJ / INST / OBJ)")
    for _opcode in (pickle.NEWOBJ, pickle.NEWOBJ_EX, pickle.INST, pickle.OBJ):
        dispatch[_opcode[0]] = refuse_instance


SCALARS = (int, float, bool, str, bytes, type(None), np.generic)
MAX_DEPTH = 64  # containers nested in one another: the known layouts nest 4 deep


def expanded_values(data, limit):
    """How many values `data` holds when every repeated reference is counted each time it occurs,
    as converting it to arrays materialises them; counting stops once past `limit`. Containers
    are visited once (their counts memoised), so a file of shared references costs no time either.
    A structure that contains itself, or nests containers more than MAX_DEPTH deep, is a RefusedPickle
    (no feature file holds one; code that walks it recursively would overflow the stack)."""
    counts, depths, in_progress, stack = {}, {}, set(), [data]

    def children(node):
        if isinstance(node, dict):
            return [*node.keys(), *node.values()]
        if isinstance(node, (list, tuple, set, frozenset)):
            return node
        if isinstance(node, np.ndarray) and node.dtype.hasobject:
            return node.ravel().tolist()
        return None

    def count(node):
        if isinstance(node, np.ndarray) and not node.dtype.hasobject:
            return node.size
        return counts.get(id(node), 1)

    while stack:
        node = stack[-1]
        items = None if id(node) in counts else children(node)
        if items is None:
            stack.pop()
            continue
        if id(node) not in in_progress:
            in_progress.add(id(node))
            pending = [x for x in items if not isinstance(x, SCALARS) and id(x) not in counts and children(x) is not None]
            if any(id(x) in in_progress for x in pending):
                raise RefusedPickle("holds a structure that contains itself")
            stack.extend(pending)
            continue
        counts[id(node)] = sum(1 if isinstance(x, SCALARS) else count(x) for x in items)
        depths[id(node)] = 1 + max((depths.get(id(x), 0) for x in items if not isinstance(x, SCALARS)), default=0)
        if depths[id(node)] > MAX_DEPTH:
            raise RefusedPickle(f"nests containers more than {MAX_DEPTH} deep")
        if counts[id(node)] > limit:
            return counts[id(node)]
        stack.pop()
    return count(data)
