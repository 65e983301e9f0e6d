from tests.fixtures.pii import PiiWatch


def test_watch_reports_place_of_a_planted_leak_without_the_value():
    """The scanner finds a planted secret and names where, never what."""
    w = PiiWatch()
    w.secret("Quillon Marrowby", "IHm81bkcMsTL7J1ilxhDNE59+p5OQkvUJ3mZQhlUNHA=", "SA")
    w.output("logs", '{"event": "x", "note": "for Quillon Marrowby"}')
    w.output("keys", "idpass/passes/abc/images/probe.jpg")
    w.output("manifest", b'{"k": "IHm81bkcMsTL7J1ilxhDNE59+p5OQkvUJ3mZQhlUNHA="}')
    findings = w.scan()
    assert len(findings) == 2
    assert findings[0].startswith("logs:") and findings[1].startswith("manifest:")
    assert all("Quillon" not in f and "IHm8" not in f for f in findings)


def test_short_strings_are_not_watched():
    """Strings shorter than six characters are ignored to avoid chance matches."""
    w = PiiWatch()
    w.secret("SA", "NSW")
    w.output("x", "SA NSW")
    assert w.scan() == []
