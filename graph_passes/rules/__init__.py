"""The rule specs legalization runs, in order. An explicit tuple: nothing registers itself on import.

Order matters: attention is normalised before its MatMuls and Softmax are looked at; GELU before Erf.
"""

ALL_SPECS: tuple = ()
