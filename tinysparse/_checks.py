"""Argument checks shared by nn, optim, gpt, moe and training: one wording for every refusal.

    check_number("lr", lr, low=0, low_open=True)     # "lr must be a positive finite number, got nan"
    check_int("n_embd", n_embd, low=1)                # "n_embd must be an integer >= 1, got 0"

Each returns the value it was given. A value of the right type outside its range (NaN and the
infinities are outside every range) is a ValueError; a value of the wrong type (a string, a
bool, a float where a count is needed) is a TypeError. Both say what the range is, so the
message names the fix. Pure Python: imports nothing from tinysparse.
"""
import math
import numbers


def describe(low=None, high=None, low_open=False, high_open=False, integer=False):
    """The range in words: 'a finite number in [0, 1)', 'an integer >= 1', 'a positive finite number'."""
    kind = "an integer" if integer else "a finite number"
    if low is not None and high is not None:
        return f"{kind} in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        if low == 0 and low_open and not integer:
            return "a positive finite number"
        return f"{kind} {'>' if low_open else '>='} {low}"
    if high is not None:
        return f"{kind} {'<' if high_open else '<='} {high}"
    return kind


def _within(value, low, high, low_open, high_open):
    if low is not None and (value < low or (low_open and value == low)):
        return False
    return high is None or not (value > high or (high_open and value == high))


def check_number(name, value, low=None, high=None, *, low_open=False, high_open=False, hint=""):
    """value, if it is a real, finite number in the range; else an error naming name and range."""
    allowed = describe(low, high, low_open, high_open)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {allowed}, got {value!r} ({type(value).__name__})")
    if not (math.isfinite(value) and _within(value, low, high, low_open, high_open)):
        raise ValueError(f"{name} must be {allowed}, got {value!r}" + (f"; {hint}" if hint else ""))
    return value


def is_int(value):
    """A Python or NumPy integer, and not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(name, value, low=None, high=None, *, hint=""):
    """value, if it is an integer in [low, high]; else an error naming name and range."""
    allowed = describe(low, high, integer=True)
    if not is_int(value):
        raise TypeError(f"{name} must be {allowed}, got {value!r} ({type(value).__name__})")
    if not _within(value, low, high, False, False):
        raise ValueError(f"{name} must be {allowed}, got {value!r}" + (f"; {hint}" if hint else ""))
    return value
