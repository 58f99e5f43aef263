"""Drop-in replacements for other session libraries' APIs, built on hashsession.

Each submodule keeps an older library's names and defaults so that switching
is a change of one import; see ``docs/migrating-from-*.md``.
"""
