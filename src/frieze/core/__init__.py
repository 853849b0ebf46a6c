"""frieze.core: the vocabulary every other layer speaks.

Ids, the error tree, the clock and pure logic such as retention. It imports nothing else of frieze.
"""
