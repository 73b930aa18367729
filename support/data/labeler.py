"""A rule-based, negation-aware labeller of chest radiograph reports (in the manner of CheXpert/NegBio).

Pipeline per report:

1. Sections: only FINDINGS and IMPRESSION are labelled (``support.data.sections``); a report
   with neither is labelled whole, less the sections that state the question rather than the
   answer (INDICATION, HISTORY, COMPARISON, TECHNIQUE, ...), which often say "evaluate for
   pneumonia".
2. Sentences, then clauses: negation and uncertainty do not reach across "but", "however", ";",
   ", and there is", nor across a comma or "and" that starts words with a verb of their own ("no
   pneumothorax, the chest tube remains"); a list keeps its negation ("no a, b or c is seen").
   "which" starts a clause when a finding follows it ("opacity, which may be atelectasis"); with
   none, it speaks of the finding before it ("consolidation, which has resolved"). A
   parenthetical ", which ...," is a clause of its own, and the verb after it belongs to the words
   before it ("the consolidation, which was seen before, has resolved").
3. Mentions: per observation, phrase patterns (synonyms). Some phrases only count when negated
   ("heart size" in "heart size is normal" -> Cardiomegaly negative; "heart size is stable" says
   nothing). Phrases that carry their own predicate ("the heart is mildly enlarged") are judged
   by the words inside them. Heart size as CheXpert reads it: borderline, or a range across the
   upper limit ("top normal to mildly enlarged"), is uncertain; "top normal" and "at the upper
   limits of normal" are normal, hence negative.
4. Each mention is uncertain when an uncertainty phrase that contains a negation word applies
   ("cannot be excluded"), else negative when a negation applies ("no", "without", "is not
   seen", "has resolved", lists after "no"), else uncertain when an uncertainty applies
   ("possible", "may", "likely", "concerning for", "versus"), else positive. A hedge after its
   finding qualifies it ("pneumonia is favored", "an effusion may be present"), unless the hedge
   names a finding of its own ("opacity is likely atelectasis": only atelectasis is uncertain).
   Scopes stop at "with", "after" and "following", which bring in another finding ("no
   pneumothorax with the chest tube in place").
5. Per observation: positive beats uncertain beats negative; unmentioned is NaN. "No Finding" is
   1 when no observation other than Support Devices is positive or uncertain, NaN otherwise.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass
from typing import Iterable

import pandas as pd
from tqdm.auto import tqdm

from support.data.schema import CHEXPERT_LABELS, NEGATIVE, POSITIVE, UNCERTAIN
from support.data.sections import parse_sections

# Sections that ask or describe the exam rather than report on the image.
IGNORED_SECTIONS = frozenset({
    "indication", "history", "clinical history", "reason for examination", "examination",
    "technique", "comparison", "notification", "clinical information", "procedure", "wet read",
    "recommendation", "addendum", "final report",
})

_CLAUSE = 10 ** 6   # a scope that reaches to the end of the clause
_OFF = -1           # a trigger that does not look in this direction


@dataclass(frozen=True)
class _Pattern:
    regex: re.Pattern
    negative_only: bool = False   # counts only when negated ("heart size is normal")
    closed: bool = False          # carries its own predicate; later words do not judge it


def _p(pattern: str, *, negative_only: bool = False, closed: bool = False) -> _Pattern:
    return _Pattern(re.compile(pattern), negative_only, closed)


# Up to four words between a heart or mediastinum phrase and its size word, none of them "normal".
_SIZE_FILLER = r"(?:\s+(?!normal\b)[a-z-]+){0,4}?\s+"
_HEART = r"(?:heart size|heart|cardiac silhouette|cardiac size|cardiac shadow|cardiac contours?)"

MENTIONS: dict[str, tuple[_Pattern, ...]] = {
    "Atelectasis": (
        _p(r"\batelecta(?:sis|ses|tic)\b"), _p(r"\bcollapsed?\b"),
    ),
    "Cardiomegaly": (
        _p(r"\bcardiomegaly\b"), _p(r"\bcardiac enlargement\b"),
        _p(r"\benlarged (?:heart|cardiac (?:silhouette|shadow|size))\b"),
        _p(r"\benlargement of the (?:heart|cardiac silhouette|cardiac shadow)\b"),
        _p(r"\b" + _HEART + r"\b" + _SIZE_FILLER + r"enlarged\b", closed=True),
        # Borderline size is uncertain, as in CheXpert; so is a range across the upper limit
        # ("top normal to mildly enlarged"). Both are judged by the words inside the phrase.
        _p(r"\b" + _HEART + r"\b" + _SIZE_FILLER + r"borderline\b", closed=True),
        _p(r"\bborderline " + _HEART + r"\b", closed=True),
        _p(r"\b" + _HEART + r"(?:\s+[a-z-]+){0,3}?\s+normal\s+(?:to|or)\s+(?:[a-z]+\s+)?(?:enlarged|borderline)\b",
           closed=True),
        _p(r"\b" + _HEART + r"\b(?! failure)", negative_only=True),
        _p(r"\bcardiomediastinal (?:and hilar )?(?:silhouette|contours?)\b", negative_only=True),
    ),
    "Consolidation": (
        _p(r"\bconsolidat(?:ion|ions|ive|ed)\b"),
    ),
    "Edema": (
        _p(r"(?<!soft tissue )(?<!subcutaneous )\bedema\b"),
        _p(r"\b(?:pulmonary|vascular|venous|interstitial) congestion\b"),
        _p(r"\bchf\b"), _p(r"\b(?:congestive )?heart failure\b"), _p(r"\bfluid overload\b"),
        _p(r"\bvascular engorgement\b"), _p(r"\bkerley\b"), _p(r"\bcephali[sz]ation\b"),
    ),
    "Enlarged Cardiomediastinum": (
        _p(r"\benlarged cardiomediastinum\b"),
        _p(r"\b(?:widened|widening of the|enlarged|enlargement of the) (?:cardio)?mediastin(?:um|al (?:silhouette|contours?))\b"),
        _p(r"\bmediastinal (?:widening|enlargement)\b"),
        _p(r"\b(?:cardio)?mediastin(?:um|al (?:silhouette|contours?))\b" + _SIZE_FILLER
           + r"(?:widened|enlarged)\b", closed=True),
        _p(r"\b(?:cardio)?mediastinal (?:and hilar )?(?:silhouette|contours?|structures)\b", negative_only=True),
        _p(r"\bhilar and mediastinal contours\b", negative_only=True),
        _p(r"\bmediastinum\b", negative_only=True),
    ),
    "Fracture": (
        _p(r"\bfractur(?:e|es|ed)\b"), _p(r"\bfx\b"),
    ),
    "Lung Lesion": (
        _p(r"\bnodules?\b"), _p(r"\bnodular (?:densit(?:y|ies)|opacit(?:y|ies)|opacification|lesions?)\b"),
        _p(r"\bmass(?:es)?\b(?! effect)"),
        _p(r"(?<!osseous )(?<!bony )(?<!lytic )(?<!sclerotic )(?<!skin )\blesions?\b"),
        _p(r"\btumou?rs?\b"), _p(r"\bneoplasms?\b"), _p(r"\bcarcinomas?\b"), _p(r"\bmalignancy\b"),
    ),
    "Lung Opacity": (
        _p(r"(?<!nodular )\bopacit(?:y|ies)\b"), _p(r"(?<!nodular )\bopacification\b"), _p(r"\bopacified\b"),
        _p(r"\binfiltrat(?:e|es|ion|ive)\b"), _p(r"\bair ?space (?:disease|process)\b"),
        _p(r"(?<!nodular )(?<!bone )\bdensit(?:y|ies)\b"), _p(r"\bground[- ]glass\b"),
    ),
    "Pleural Effusion": (
        _p(r"(?<!pericardial )(?<!joint )\beffusions?\b"), _p(r"\bpleural fluid\b"),
        _p(r"\bhydro(?:pneumo)?thora(?:x|ces)\b"),
        _p(r"\bblunt(?:ing|ed) of the (?:\w+ ){0,2}costophrenic angles?\b"),
        _p(r"\bblunted (?:\w+ ){0,2}costophrenic angles?\b"),
        _p(r"\bcostophrenic angles? (?:is |are )?blunted\b"), _p(r"\blayering fluid\b"),
    ),
    "Pleural Other": (
        _p(r"\bpleural (?:thickening|plaques?|scarring|calcifications?)\b"), _p(r"\bfibrothorax\b"),
        _p(r"\bapical (?:pleural )?(?:cap|thickening)\b"),
        _p(r"\bpleural-parenchymal (?:scarring|thickening)\b"),
    ),
    "Pneumonia": (
        _p(r"\b(?:broncho)?pneumonias?\b"), _p(r"\binfect(?:ion|ions|ious)(?: process)?\b"), _p(r"\bpna\b"),
    ),
    "Pneumothorax": (
        _p(r"\b(?:hydro)?pneumothora(?:x|ces)\b"), _p(r"\bptx\b"),
    ),
    "Support Devices": (
        _p(r"\btubes?\b"), _p(r"\bett\b"), _p(r"\bcatheters?\b"),
        _p(r"(?<!pleural )(?<!septal )(?<!kerley b )(?<!kerley )(?<!skin )\blines?\b"),
        _p(r"\bpacemakers?\b"), _p(r"\bpacer\b"), _p(r"\bleads?\b(?! to\b)"), _p(r"\bwires?\b"),
        _p(r"\belectrodes?\b"), _p(r"\b(?:a?icd|defibrillator)\b"), _p(r"\bpicc\b"),
        _p(r"\bport(?:-a-cath)?\b"), _p(r"\bportacath\b"), _p(r"\bstents?\b"), _p(r"\bdevices?\b"),
        _p(r"\bdrains?\b"), _p(r"\b(?:prosthetic valve|valve replacement)\b"), _p(r"\bswan-ganz\b"),
        _p(r"\b(?:intra-aortic balloon pump|iabp)\b"),
    ),
}


@dataclass(frozen=True)
class _Trigger:
    regex: re.Pattern
    forward: int          # max words between trigger and a later mention (_OFF: not forward)
    backward: int         # max words between an earlier mention and the trigger
    negative_only_targets: bool = False   # "normal" judges only phrases like "heart size"
    # A predicate after its subject ("is likely", "unlikely"): when a finding follows it as its
    # complement ("opacity is likely atelectasis"), it judges that finding, not its subject.
    predicate: bool = False


def _t(pattern: str, forward: int = _CLAUSE, backward: int = _OFF, negative_only_targets: bool = False,
       predicate: bool = False) -> _Trigger:
    return _Trigger(re.compile(pattern), forward, backward, negative_only_targets, predicate)


# Phrases that look like negations but are not ("no change in the effusion").
_NEUTRAL = re.compile(
    r"\b(?:no|without)\s+(?:\w+\s+){0,2}?(?:change|changes|difference)\b|\bnot\s+(?:\w+\s+)?changed\b"
    r"|\bnot only\b"
)

# Uncertainty written with a negation word: checked first, then masked from the negation search.
_NEG_UNCERTAIN = (
    _t(r"\b(?:cannot|can ?not|can't|could not|couldn't)\s+(?:be\s+)?(?:entirely\s+|completely\s+|"
       r"definitely\s+|fully\s+)?(?:exclude|excluded|rule out|ruled out)\b", backward=6),
    _t(r"\bnot\s+(?:be\s+)?(?:entirely\s+|completely\s+|definitely\s+)?(?:excluded|ruled out)\b", backward=6),
    _t(r"\b(?:difficult|hard) to (?:exclude|rule out)\b", backward=6),
    # Seen, but not well enough to say (CheXpert: uncertain).
    _t(r"\bnot\s+(?:well|clearly)\s+(?:seen|visuali[sz]ed|evaluated|assessed)\b", forward=_OFF, backward=6),
)

_NEGATION = (
    _t(r"\bno\b"), _t(r"\bwithout\b"), _t(r"\bfree of\b"), _t(r"\bnegative for\b"),
    _t(r"\babsence of\b"), _t(r"\bresolution of\b"), _t(r"\bclear of\b"),
    _t(r"\bremoval(?: of)?\b", backward=2),   # "removal of the tube", "chest tube removal"
    _t(r"\brather than\b"),
    _t(r"\bnot\b", forward=3),
    _t(r"\bresolved\b", backward=6), _t(r"\bremoved\b", backward=6), _t(r"\bcleared\b", forward=_OFF, backward=3),
    _t(r"\bunlikely\b", forward=3, backward=3, predicate=True),
    _t(r"\bexcluded\b", forward=_OFF, backward=2),
    _t(r"\babsent\b", forward=_OFF, backward=3),
    _t(r"\b(?:not|no longer)\s+(?:\w+\s+)?(?:seen|identified|visuali[sz]ed|appreciated|evident|present|"
       r"demonstrated|detected|noted|apparent|visible|observed|enlarged|widened|dilated)\b",
       forward=_OFF, backward=6),
    _t(r"\b(?:(?:at|within)\s+(?:the\s+)?upper\s+(?:limits?|range)\s+of\s+)?normal\b",
       forward=3, backward=4, negative_only_targets=True),
    _t(r"\bunremarkable\b", forward=2, backward=4, negative_only_targets=True),
)

_UNCERTAINTY = (
    _t(r"\bpossib(?:le|ly|ility)\b"), _t(r"\bprobabl[ey]\b"), _t(r"\blikely\b"), _t(r"\bmay\b"),
    _t(r"\bmight\b"), _t(r"\bcould\b"), _t(r"\bquestion(?:able|ably|ed)?\b"), _t(r"\bsuspicio(?:us|n)\b"),
    _t(r"\bsuspect(?:ed|s)?\b"), _t(r"\bsuggest(?:s|ed|ive|ing|ion)?\b"), _t(r"\bconcern(?:ing|s)?\b"),
    _t(r"\bworrisome\b"), _t(r"\bborderline\b"), _t(r"\bequivocal\b"), _t(r"\bpresum(?:ed|ably|ptive)\b"),
    _t(r"\bperhaps\b"), _t(r"\bdifferential\b"), _t(r"\bindeterminate\b"), _t(r"\bconsider(?:ed)?\b"),
    _t(r"\b(?:rule out|r/o)\b"), _t(r"\b(?:evaluate|eval|assess|evaluation|assessment) for\b"),
    _t(r"\b(?:versus|vs)\b", forward=_CLAUSE, backward=0),
    _t(r"\?", forward=1, backward=0),
    # Hedges written after the finding they qualify.
    _t(r"\b(?:is|are|was|were|appears?|seems?)\s+(?:also\s+|still\s+)?(?:(?:more|most|less)\s+)?"
       r"(?:possible|likely|probable|probably|suspected|questioned|questionable|considered|suggested|favou?red|"
       r"a consideration|a possibility)\b", forward=_OFF, backward=3, predicate=True),
    _t(r"\b(?:(?:may|might|could|can|would)\s+(?:also\s+|still\s+)?be|possibly|probably|likely|questionably)"
       r"\s+present\b", forward=_OFF, backward=6),
    _t(r"\bif (?:any|present)\b", forward=_OFF, backward=4),
)

_INNER_NEGATION = re.compile(r"\b(?:not|no longer)\b")
_INNER_UNCERTAINTY = re.compile(
    r"\b(?:possibly|probably|likely|may|might|could|questionably|borderline)\b|\bnormal\s+(?:to|or)\b")

# A finding brought in by these words is not under the negation or hedge of the one before them
# ("no pneumothorax with the chest tube in place", "no pneumothorax after line placement").
_SCOPE_STOP = re.compile(r"(?<!consistent )(?<!compatible )(?<!keeping )\bwith\b|\b(?:after|following)\b")
# "opacity is more likely atelectasis than pneumonia": the finding after "than" is no complement.
_COMPARISON = re.compile(r"\b(?:than|over)\b")
_COMPLEMENT_WORDS = 3   # "is likely due to atelectasis"

# A finite verb, or a device's position ("chest tube in place"): what makes words a clause.
_VERB = (r"(?:is|are|was|were|has|have|had|remains?|persists?|can(?:not)?|may|might|could|would|should|will|"
         r"terminates?|ends?|projects?|courses?|extends?|lies|overlies|appears?|seems?|measures?)")
_PREDICATE = r"(?:\b" + _VERB + r"\b|\bin (?:\w+ ){0,2}(?:place|position)\b)"
_HAS_PREDICATE = re.compile(_PREDICATE)

_CLAUSE_BREAK = re.compile(
    r";|:|\s-\s|\b(?:but|however|although|though|whereas|while|except|aside from|apart from|other than|"
    r"with the exception of|otherwise)\b|,\s*and\s+(?=(?:there|the|a|an|this|these|it)\b)"
    r"|\band\s+(?=(?:the|there)\b)"
    # A comma before words with a predicate of their own starts a clause ("no pneumothorax, the
    # chest tube remains"), unless "and"/"or" comes first: that is a list ("no a, b or c is seen").
    # "which" is left to _split_relative.
    r"|,(?!\s*which\b)\s*(?=(?:(?!\b(?:and|or)\b)[^,])*?" + _PREDICATE + r")"
)
_AND = re.compile(r"\band\b")
_WHICH = re.compile(r"\bwhich\b")
# ", which ..., has resolved" / ", however, has": the main verb after the aside belongs to the
# words before it, so the aside is lifted out as a clause of its own.
_PARENTHETICAL = re.compile(r",\s*(which\b[^,;]*|however|though)\s*,\s*(?=" + _VERB + r"\b)")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"[a-z0-9]+")
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"',
                         "\u2013": "-", "\u2014": "-", "\u2010": "-", "\u2011": "-", "\u00a0": " "})


@dataclass(frozen=True)
class Mention:
    """One phrase that names an observation, with its judged value (1, 0 or -1)."""

    label: str
    phrase: str
    clause: str
    value: float


def _normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).translate(_QUOTES).lower()
    return " ".join(text.split())


def report_body(text: str) -> str:
    """The part of a report that is labelled: FINDINGS + IMPRESSION, or the whole report less
    the question/exam sections when it has neither."""
    if not isinstance(text, str):
        raise TypeError(f"report: expected str, got {type(text).__name__}")
    sections = parse_sections(text)
    parts = [sections["findings"], sections["impression"]]
    if not any(p.strip() for p in parts):
        parts = [body for name, body in sections.items() if name not in IGNORED_SECTIONS]
    # Each section ends a sentence, so a negation never runs from FINDINGS into IMPRESSION.
    return " ".join(p.strip().rstrip(".") + "." for p in parts if p.strip())


def _lift_parentheticals(sentence: str) -> list[str]:
    """The sentence with its parenthetical asides taken out, then the asides as clauses."""
    asides = [m.group(1) for m in _PARENTHETICAL.finditer(sentence)]
    return [_PARENTHETICAL.sub(" ", sentence), *asides]


def _split_relative(clause: str) -> list[str]:
    """Split before a "which" whose clause names a finding of its own ("opacity, which may be
    atelectasis"); one that names none speaks of the finding before it ("consolidation, which has
    resolved") and stays with it."""
    m = _WHICH.search(clause)
    if m and _find_mentions(clause[m.end():]):
        return [clause[:m.start()], *_split_relative(clause[m.end():])]
    return [clause]


def _split_coordinated(clause: str) -> list[str]:
    """Split at each "and" that joins two clauses with a predicate each ("no effusion is seen and a
    tube remains"); "effusion and pneumothorax are absent" has none before its "and"."""
    out, start = [], 0
    for m in _AND.finditer(clause):
        if _HAS_PREDICATE.search(clause[start:m.start()]) and _HAS_PREDICATE.search(clause[m.end():]):
            out.append(clause[start:m.start()])
            start = m.end()
    out.append(clause[start:])
    return out


def _clauses(body: str) -> list[str]:
    pieces = _SENTENCE_END.split(_normalise(body))
    for split in (_lift_parentheticals, _CLAUSE_BREAK.split, _split_relative, _split_coordinated):
        pieces = [p for piece in pieces for p in split(piece)]
    return [p.strip() for p in pieces if p.strip()]


def _words_between(clause: str, start: int, end: int) -> int:
    return len(_WORD.findall(clause[start:end]))


def _mask(text: str, spans: Iterable[tuple[int, int]]) -> str:
    chars = list(text)
    for s, e in spans:
        chars[s:e] = " " * (e - s)
    return "".join(chars)


def _find_mentions(clause: str) -> list[tuple[str, int, int, _Pattern]]:
    found = []
    for label, patterns in MENTIONS.items():
        candidates = [(m.start(), m.end(), pat) for pat in patterns for m in pat.regex.finditer(clause)]
        # Longest phrase first; an overlapping shorter phrase of the same observation is the same mention.
        candidates.sort(key=lambda c: (-(c[1] - c[0]), c[0]))
        kept: list[tuple[int, int, _Pattern]] = []
        for s, e, pat in candidates:
            if all(e <= ks or s >= ke for ks, ke, _ in kept):
                kept.append((s, e, pat))
        found.extend((label, s, e, pat) for s, e, pat in kept)
    return found


@dataclass(frozen=True)
class _Hit:
    """One trigger found in a clause."""

    start: int
    end: int
    trigger: _Trigger
    looks_back: bool   # False for a predicate whose complement follows it


def _has_complement(clause: str, end: int, mention_starts: list[int]) -> bool:
    return any(s >= end and _words_between(clause, end, s) <= _COMPLEMENT_WORDS
               and not _COMPARISON.search(clause[end:s]) for s in mention_starts)


def _find_triggers(searched: str, triggers: tuple[_Trigger, ...], mention_starts: list[int]) -> list[_Hit]:
    return [_Hit(m.start(), m.end(), t, not (t.predicate and _has_complement(searched, m.end(), mention_starts)))
            for t in triggers for m in t.regex.finditer(searched)]


def _applies(hit: _Hit, clause: str, start: int, end: int, pattern: _Pattern) -> bool:
    t = hit.trigger
    if hit.start < end and hit.end > start:          # inside the mention: judged by _INNER_* instead
        return False
    if t.negative_only_targets and not pattern.negative_only:
        return False
    if hit.end <= start:
        lo, hi, reach = hit.end, start, t.forward
    elif hit.looks_back and not pattern.closed:
        lo, hi, reach = end, hit.start, t.backward
    else:
        return False
    return reach != _OFF and _words_between(clause, lo, hi) <= reach and not _SCOPE_STOP.search(clause[lo:hi])


def _judge_clause(clause: str) -> list[Mention]:
    mentions = _find_mentions(clause)
    if not mentions:
        return []
    starts = [s for _, s, _, _ in mentions]
    searched = _mask(clause, [m.span() for m in _NEUTRAL.finditer(clause)])
    neg_unc = _find_triggers(searched, _NEG_UNCERTAIN, starts)
    searched = _mask(searched, [(h.start, h.end) for h in neg_unc])
    negations = _find_triggers(searched, _NEGATION, starts)
    uncertain = _find_triggers(searched, _UNCERTAINTY, starts)
    out = []
    for label, s, e, pat in mentions:
        phrase = clause[s:e]
        if any(_applies(h, clause, s, e, pat) for h in neg_unc):
            value = UNCERTAIN
        elif (pat.closed and _INNER_NEGATION.search(phrase)) or any(_applies(h, clause, s, e, pat) for h in negations):
            value = NEGATIVE
        elif (pat.closed and _INNER_UNCERTAINTY.search(phrase)) or any(_applies(h, clause, s, e, pat) for h in uncertain):
            value = UNCERTAIN
        else:
            value = POSITIVE
        if pat.negative_only and value != NEGATIVE:
            continue
        out.append(Mention(label, phrase, clause, value))
    return out


def extract_mentions(text: str) -> list[Mention]:
    """Every observation mention in the labelled part of ``text``, in reading order per clause."""
    return [m for clause in _clauses(report_body(text)) for m in _judge_clause(clause)]


_RANK = {POSITIVE: 3, UNCERTAIN: 2, NEGATIVE: 1}


def label_report(text: str) -> dict[str, float]:
    """CheXpert labels of one report: ``{label: 1.0 | 0.0 | -1.0 | nan}`` over ``CHEXPERT_LABELS``.

    An empty report (or one whose labelled sections are empty) gets NaN everywhere.
    """
    labels = {name: math.nan for name in CHEXPERT_LABELS}
    body = report_body(text)
    if not body.strip():
        return labels
    for m in (m for clause in _clauses(body) for m in _judge_clause(clause)):
        current = labels[m.label]
        if math.isnan(current) or _RANK[m.value] > _RANK[current]:
            labels[m.label] = m.value
    abnormal = any(labels[name] in (POSITIVE, UNCERTAIN)
                   for name in CHEXPERT_LABELS if name not in ("No Finding", "Support Devices"))
    labels["No Finding"] = math.nan if abnormal else POSITIVE
    return labels


def label_reports(texts: Iterable[str | None] | pd.Series, progress: bool = True) -> pd.DataFrame:
    """Label many reports: one row per text (index kept from a Series), columns ``CHEXPERT_LABELS``.

    A missing report (None or NaN, as pandas reads an empty cell) gets a row of NaN; any other
    non-string entry is an error naming its position.
    """
    index = texts.index if isinstance(texts, pd.Series) else None
    rows = []
    for i, text in enumerate(tqdm(list(texts), desc="labelling reports", unit="report",
                                  disable=None if progress else True)):
        if text is None or (isinstance(text, float) and math.isnan(text)):
            text = ""
        if not isinstance(text, str):
            key = index[i] if index is not None else i
            raise TypeError(f"reports[{key!r}]: expected str (or None for a missing report), "
                            f"got {type(text).__name__}")
        rows.append(label_report(text))
    frame = pd.DataFrame(rows, columns=list(CHEXPERT_LABELS), dtype=float)
    if index is not None:
        frame.index = index
    return frame
