"""The study's figures tell every arm apart, however many arms there are."""

from cgrpo.evaluation.output.plots import PALETTE
from cgrpo.study.figures import arm_styles


def test_every_arm_of_a_large_study_has_its_own_look():
    arms = [f"arm{i}" for i in range(len(PALETTE) + 3)]
    styles = arm_styles(arms)
    looks = {(s.colour, s.marker, s.linestyle) for s in styles.values()}
    assert len(looks) == len(arms)
    assert styles["arm0"].colour == styles[f"arm{len(PALETTE)}"].colour  # colours cycle...
    assert styles["arm0"].marker != styles[f"arm{len(PALETTE)}"].marker  # ...with a new marker
