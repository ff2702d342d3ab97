"""Update codecs: pure encode/decode functions plus a small state object each."""
