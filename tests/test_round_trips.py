"""The round-trip counter itself: a statement's preparation is counted apart from the budget (tests/round_trips.py)."""

from tests.round_trips import RoundTrips


def test_a_preparation_is_counted_apart_from_the_round_trips_of_the_budget():
    prep = RoundTrips(
        messages=[
            'F\t20\tParse\t "_pg3_1" "SELECT 1" 0',
            "F\t4\tSync",
            "B\t4\tParseComplete",
            "B\t5\tReadyForQuery\t I",
        ]
    )
    assert prep.count == 0 and prep.preparations == 1
    unnamed = RoundTrips(
        messages=['F\t20\tParse\t "" "SELECT 1" 0', "F\t4\tSync", "B\t4\tParseComplete", "B\t5\tReadyForQuery\t I"]
    )
    assert unnamed.count == 1 and unnamed.preparations == 0
    run = RoundTrips(messages=['F\t20\tBind\t "" "_pg3_1" 0', "F\t4\tExecute", "F\t4\tSync", "B\t5\tReadyForQuery\t I"])
    assert run.count == 1
