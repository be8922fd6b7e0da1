"""A small sample corpus of public-administration texts, loaded into the documents table and Chroma.

    python -m dataset_builder.sample_corpus

Law-like paragraphs and citizen FAQ in German and English, written for Clara's demo and tests; they
paraphrase no statute exactly and advise no one. A few exact and near duplicates, a few texts with
personal data (e-mail addresses, phone numbers, IBANs) and some boilerplate give the quality stages
work. Loading is idempotent: rows and Chroma records are upserted by id.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, NamedTuple

import psycopg2
from psycopg2 import sql
from psycopg2.extras import execute_values

import settings as clara_settings
from dataset_builder.sources import SourceContext, context_from_settings, ensure_documents_table
from dataset_builder.sources.chroma import chroma_client
from dataset_builder.sources.embeddings import embedding_function

logger = logging.getLogger(__name__)

COLLECTION = "documents"


class SampleDocument(NamedTuple):
    """One document of the sample corpus."""

    id: str
    kind: str  # law or faq
    law: str
    topic: str
    language: str  # de or en
    created_at: str
    title: str
    content: str

    @property
    def metadata(self) -> dict[str, str]:
        """What the postgres row carries as metadata, and the Chroma record too."""
        return {"law": self.law, "topic": self.topic, "language": self.language, "kind": self.kind}


_D = SampleDocument
SAMPLE_DOCUMENTS: tuple[SampleDocument, ...] = (
    # Datenschutz
    _D("bdsg-1", "law", "BDSG", "datenschutz", "de", "2018-05-25", "§ 1 Anwendungsbereich des Gesetzes",
       "Dieses Gesetz gilt für die Verarbeitung personenbezogener Daten durch öffentliche Stellen des Bundes. "
       "Für öffentliche Stellen der Länder gilt es nur, soweit der Datenschutz nicht durch Landesgesetz geregelt "
       "ist. Nichtöffentliche Stellen erfasst es, soweit sie Daten ganz oder teilweise automatisiert verarbeiten."),
    _D("bdsg-3", "law", "BDSG", "datenschutz", "de", "2018-05-25", "§ 3 Verarbeitung durch öffentliche Stellen",
       "Eine öffentliche Stelle darf personenbezogene Daten verarbeiten, wenn dies zur Erfüllung einer Aufgabe "
       "in ihrer Zuständigkeit oder in Ausübung öffentlicher Gewalt erforderlich ist. Die Erforderlichkeit ist "
       "für jeden Verarbeitungszweck gesondert zu prüfen und zu dokumentieren."),
    _D("bdsg-22", "law", "BDSG", "gesundheitsdaten", "de", "2018-05-25", "§ 22 Besondere Kategorien von Daten",
       "Gesundheitsdaten dürfen abweichend vom grundsätzlichen Verbot verarbeitet werden, wenn dies für die "
       "Gesundheitsvorsorge, die medizinische Diagnostik oder die Versorgung im Gesundheitswesen erforderlich ist. "
       "Der Verantwortliche sieht angemessene Schutzmaßnahmen vor, etwa Pseudonymisierung, Verschlüsselung und "
       "eine Protokollierung der Zugriffe."),
    _D("bdsg-38", "law", "BDSG", "datenschutz", "de", "2019-11-26", "§ 38 Datenschutzbeauftragte",
       "Nichtöffentliche Stellen benennen eine Datenschutzbeauftragte oder einen Datenschutzbeauftragten, wenn "
       "sie in der Regel mindestens zwanzig Personen ständig mit der automatisierten Verarbeitung "
       "personenbezogener Daten beschäftigen."),
    _D("dsgvo-15", "law", "DSGVO", "betroffenenrechte", "de", "2016-04-27", "Art. 15 Auskunftsrecht",
       "Die betroffene Person kann vom Verantwortlichen eine Bestätigung verlangen, ob sie betreffende "
       "personenbezogene Daten verarbeitet werden. Ist das der Fall, erhält sie Auskunft über diese Daten, die "
       "Zwecke der Verarbeitung, die Empfänger und die geplante Speicherdauer sowie eine Kopie der Daten."),
    _D("dsgvo-15-portal", "law", "DSGVO", "betroffenenrechte", "de", "2021-03-01", "Art. 15 Auskunftsrecht",
       "Die betroffene Person kann vom Verantwortlichen eine Bestätigung verlangen, ob sie betreffende "
       "personenbezogene Daten verarbeitet werden. Ist dies der Fall, erhält sie Auskunft über diese Daten, die "
       "Zwecke der Verarbeitung, die Empfänger und die geplante Speicherdauer sowie eine Kopie der Daten."),
    _D("dsgvo-17", "law", "DSGVO", "betroffenenrechte", "de", "2016-04-27", "Art. 17 Recht auf Löschung",
       "Die betroffene Person kann verlangen, dass sie betreffende Daten unverzüglich gelöscht werden, wenn sie "
       "für die Zwecke, für die sie erhoben wurden, nicht mehr notwendig sind oder die Einwilligung widerrufen "
       "wurde. Gesetzliche Aufbewahrungspflichten gehen der Löschung vor."),
    _D("dsgvo-33", "law", "DSGVO", "datenpannen", "de", "2016-04-27", "Art. 33 Meldung von Datenpannen",
       "Bei einer Verletzung des Schutzes personenbezogener Daten meldet der Verantwortliche diese unverzüglich, "
       "möglichst binnen 72 Stunden, der zuständigen Aufsichtsbehörde. Eine spätere Meldung ist zu begründen."),
    _D("gdpr-6", "law", "GDPR", "data protection", "en", "2016-04-27", "Article 6 Lawfulness of processing",
       "Processing of personal data is lawful only if the data subject has given consent, or if it is necessary "
       "for a contract, a legal obligation, the vital interests of a person, a task carried out in the public "
       "interest, or the legitimate interests of the controller."),
    _D("gdpr-17", "law", "GDPR", "data subject rights", "en", "2016-04-27", "Article 17 Right to erasure",
       "The data subject may ask the controller to erase personal data without undue delay where the data are "
       "no longer needed for the purpose they were collected for or where consent has been withdrawn."),
    _D("gdpr-33", "law", "GDPR", "data breaches", "en", "2016-04-27", "Article 33 Notifying a personal data breach",
       "In the case of a personal data breach, the controller notifies the supervisory authority without undue "
       "delay and, where feasible, within 72 hours of becoming aware of it."),
    _D("faq-en-data-copy", "faq", "GDPR", "data subject rights", "en", "2022-02-14",
       "How do I get a copy of the personal data an authority holds about me?",
       "Send a written request to the authority's data protection officer and name the matters you are "
       "interested in. The authority must answer within one month and provide a copy of your personal data free "
       "of charge."),
    _D("faq-en-data-copy-v2", "faq", "GDPR", "data subject rights", "en", "2023-06-01",
       "How can I get a copy of the personal data an authority holds about me?",
       "Send a written request to the authority's data protection officer and name the matters you are "
       "interested in. The authority has to answer within one month and provide a copy of your personal data "
       "free of charge."),
    # Krankenversicherung
    _D("sgb5-5", "law", "SGB V", "krankenversicherung", "de", "2004-01-01", "§ 5 Versicherungspflicht",
       "In der gesetzlichen Krankenversicherung sind Arbeiter und Angestellte versicherungspflichtig, die gegen "
       "Arbeitsentgelt beschäftigt sind, ebenso Bezieher von Arbeitslosengeld und Studierende an staatlichen "
       "oder staatlich anerkannten Hochschulen."),
    _D("sgb5-10", "law", "SGB V", "krankenversicherung", "de", "2004-01-01", "§ 10 Familienversicherung",
       "Ehegatten, Lebenspartner und Kinder von Mitgliedern sind beitragsfrei versichert, wenn sie ihren "
       "Wohnsitz im Inland haben und ihr Gesamteinkommen regelmäßig eine festgelegte Grenze nicht übersteigt."),
    _D("sgb5-27", "law", "SGB V", "leistungen", "de", "2004-01-01", "§ 27 Krankenbehandlung",
       "Versicherte haben Anspruch auf Krankenbehandlung, wenn sie notwendig ist, um eine Krankheit zu erkennen, "
       "zu heilen, ihre Verschlimmerung zu verhüten oder Krankheitsbeschwerden zu lindern. Dazu gehören ärztliche "
       "und zahnärztliche Behandlung, Arznei- und Heilmittel sowie Krankenhausbehandlung."),
    _D("sgb5-44", "law", "SGB V", "leistungen", "de", "2004-01-01", "§ 44 Krankengeld",
       "Versicherte haben Anspruch auf Krankengeld, wenn eine Krankheit sie arbeitsunfähig macht oder sie auf "
       "Kosten der Krankenkasse stationär behandelt werden."),
    _D("sgb5-175", "law", "SGB V", "krankenversicherung", "de", "2021-01-01", "§ 175 Wahl der Krankenkasse",
       "Versicherungspflichtige können ihre Krankenkasse frei wählen. Die Wahl wird gegenüber der gewählten "
       "Krankenkasse erklärt; diese darf die Mitgliedschaft nicht ablehnen. An die Wahl ist das Mitglied zwölf "
       "Monate gebunden."),
    _D("sgb5-175-2019", "law", "SGB V", "krankenversicherung", "de", "2019-01-01", "§ 175 Wahl der Krankenkasse",
       "Versicherungspflichtige können ihre Krankenkasse grundsätzlich frei wählen. Die Wahl wird gegenüber der "
       "gewählten Krankenkasse erklärt; diese darf die Mitgliedschaft nicht ablehnen. An die Wahl ist das "
       "Mitglied achtzehn Monate gebunden."),
    _D("sgb5-341", "law", "SGB V", "gesundheitsdaten", "de", "2021-01-01", "§ 341 Elektronische Patientenakte",
       "Die elektronische Patientenakte speichert Befunde, Diagnosen und Behandlungsberichte der Versicherten. "
       "Zugriff erhalten Ärztinnen und Ärzte nur, soweit die Versicherten es erlauben; jeder Zugriff wird "
       "protokolliert."),
    _D("faq-de-kassenwechsel", "faq", "SGB V", "krankenversicherung", "de", "2022-09-12",
       "Wie wechsle ich meine Krankenkasse?",
       "Sie wählen eine neue Krankenkasse und beantragen dort die Mitgliedschaft. Die neue Kasse informiert Ihre "
       "bisherige Kasse und Ihren Arbeitgeber. Der Wechsel wird zum Ende des übernächsten Monats wirksam."),
    _D("faq-de-studierende-kv", "faq", "SGB V", "krankenversicherung", "de", "2023-03-20",
       "Müssen Studierende krankenversichert sein?",
       "Ja. Wer an einer Hochschule eingeschrieben ist, muss bei der Einschreibung eine Krankenversicherung "
       "nachweisen. Bis 25 Jahre sind viele Studierende über die Familienversicherung der Eltern versichert."),
    _D("faq-en-health-insurance", "faq", "SGB V", "health insurance", "en", "2023-04-03",
       "Do I need health insurance in Germany?",
       "Yes. Everyone living in Germany must have health insurance. Employees earning below a threshold are "
       "insured in a statutory health insurance fund; contributions are shared with the employer."),
    _D("faq-en-patient-record", "faq", "SGB V", "health data", "en", "2024-01-15",
       "Who can see my electronic patient record?",
       "Your electronic patient record holds medical findings and treatment reports. Doctors may only read it "
       "with your permission, and every access to your medical records is logged so you can check it."),
    # Melderecht
    _D("bmg-17", "law", "BMG", "meldewesen", "de", "2015-11-01", "§ 17 Anmeldung und Abmeldung",
       "Wer eine Wohnung bezieht, hat sich innerhalb von zwei Wochen nach dem Einzug bei der Meldebehörde "
       "anzumelden. Wer aus einer Wohnung auszieht und keine neue Wohnung im Inland bezieht, hat sich innerhalb "
       "von zwei Wochen abzumelden."),
    _D("bmg-17-spiegel", "law", "BMG", "meldewesen", "de", "2015-11-01", "§ 17 Anmeldung und Abmeldung",
       "Wer eine Wohnung bezieht, hat sich innerhalb von zwei Wochen nach dem Einzug bei der Meldebehörde "
       "anzumelden. Wer aus einer Wohnung auszieht und keine neue Wohnung im Inland bezieht, hat sich innerhalb "
       "von zwei Wochen abzumelden."),
    _D("bmg-19", "law", "BMG", "meldewesen", "de", "2015-11-01", "§ 19 Mitwirkung des Wohnungsgebers",
       "Der Wohnungsgeber wirkt bei der Anmeldung mit und bestätigt den Einzug innerhalb von zwei Wochen "
       "schriftlich oder elektronisch. Eine Scheinanmeldung ist eine Ordnungswidrigkeit."),
    _D("faq-de-ummelden", "faq", "BMG", "meldewesen", "de", "2022-05-02", "Wie melde ich meinen Wohnsitz um?",
       "Vereinbaren Sie einen Termin beim Bürgeramt und bringen Sie Ihren Personalausweis sowie die "
       "Wohnungsgeberbestätigung mit. Die Anmeldung ist gebührenfrei."),
    _D("faq-en-register", "faq", "BMG", "registration", "en", "2022-05-02",
       "How do I register my address after moving?",
       "Book an appointment at the citizens' office within two weeks of moving in. Bring your passport or "
       "identity card and the confirmation from your landlord. Registration is free of charge."),
    _D("faq-en-register-mirror", "faq", "BMG", "registration", "en", "2022-05-02",
       "How do I register my address after moving?",
       "Book an appointment at the citizens' office within two weeks of moving in. Bring your passport or "
       "identity card and the confirmation from your landlord. Registration is free of charge."),
    _D("anfrage-2023-0412", "faq", "BMG", "meldewesen", "de", "2023-04-12", "Bürgeranfrage zur Ummeldung",
       "Anfrage von Max Mustermann, E-Mail max.mustermann@example.org, Telefon 030 1234567: Ich ziehe am 1. Juni "
       "innerhalb Berlins um. Muss ich mich ummelden, obwohl ich im selben Bezirk bleibe? Antwort: Ja, auch ein "
       "Umzug innerhalb der Gemeinde ist binnen zwei Wochen zu melden."),
    # Bauen
    _D("baugb-29", "law", "BauGB", "bauen", "de", "2017-05-04", "§ 29 Begriff des Vorhabens",
       "Vorhaben im Sinne des Gesetzes sind die Errichtung, Änderung oder Nutzungsänderung baulicher Anlagen. "
       "Für sie gelten die Vorschriften über die Zulässigkeit von Vorhaben im Geltungsbereich eines "
       "Bebauungsplans, im Innenbereich und im Außenbereich."),
    _D("baugb-34", "law", "BauGB", "bauen", "de", "2017-05-04", "§ 34 Vorhaben im Innenbereich",
       "Innerhalb der im Zusammenhang bebauten Ortsteile ist ein Vorhaben zulässig, wenn es sich nach Art und Maß "
       "der baulichen Nutzung in die Eigenart der näheren Umgebung einfügt und die Erschließung gesichert ist."),
    _D("baugb-35", "law", "BauGB", "bauen", "de", "2017-05-04", "§ 35 Bauen im Außenbereich",
       "Im Außenbereich ist ein Vorhaben nur zulässig, wenn öffentliche Belange nicht entgegenstehen und es "
       "etwa einem land- oder forstwirtschaftlichen Betrieb dient. Sonstige Vorhaben sind nur im Einzelfall "
       "zulässig."),
    _D("faq-de-baugenehmigung", "faq", "BauO", "bauen", "de", "2023-02-01", "Brauche ich eine Baugenehmigung?",
       "Für Neubauten, Anbauten und viele Umbauten ist eine Baugenehmigung erforderlich. Kleine Vorhaben wie "
       "Gartenhäuser bis zu einer bestimmten Größe sind oft verfahrensfrei. Fragen Sie im Zweifel bei der "
       "unteren Bauaufsichtsbehörde nach."),
    _D("faq-en-building-permit", "faq", "BauO", "building", "en", "2023-02-01", "Do I need a building permit?",
       "New buildings, extensions and many conversions need a building permit from the local building "
       "authority. Small structures such as garden sheds up to a certain size are often exempt."),
    # Verwaltungsverfahren
    _D("vwvfg-28", "law", "VwVfG", "verwaltungsverfahren", "de", "2003-01-23", "§ 28 Anhörung Beteiligter",
       "Bevor ein Verwaltungsakt erlassen wird, der in Rechte eines Beteiligten eingreift, ist diesem Gelegenheit "
       "zu geben, sich zu den für die Entscheidung erheblichen Tatsachen zu äußern."),
    _D("vwvfg-35", "law", "VwVfG", "verwaltungsverfahren", "de", "2003-01-23", "§ 35 Begriff des Verwaltungsaktes",
       "Verwaltungsakt ist jede Verfügung, Entscheidung oder andere hoheitliche Maßnahme, die eine Behörde zur "
       "Regelung eines Einzelfalls auf dem Gebiet des öffentlichen Rechts trifft und die auf unmittelbare "
       "Rechtswirkung nach außen gerichtet ist."),
    _D("vwvfg-35-kommentar", "law", "VwVfG", "verwaltungsverfahren", "de", "2010-06-30",
       "§ 35 Begriff des Verwaltungsaktes (Lesefassung)",
       "Ein Verwaltungsakt ist jede Verfügung, Entscheidung oder andere hoheitliche Maßnahme, die eine Behörde "
       "zur Regelung eines Einzelfalls auf dem Gebiet des öffentlichen Rechts trifft und die auf unmittelbare "
       "Rechtswirkung nach außen gerichtet ist."),
    _D("vwvfg-37", "law", "VwVfG", "verwaltungsverfahren", "de", "2003-01-23", "§ 37 Bestimmtheit und Form",
       "Ein Verwaltungsakt muss inhaltlich hinreichend bestimmt sein. Er kann schriftlich, elektronisch, mündlich "
       "oder in anderer Weise erlassen werden; ein schriftlicher Verwaltungsakt lässt die erlassende Behörde "
       "erkennen."),
    _D("vwvfg-41", "law", "VwVfG", "verwaltungsverfahren", "de", "2003-01-23", "§ 41 Bekanntgabe",
       "Ein Verwaltungsakt ist demjenigen bekannt zu geben, für den er bestimmt ist. Ein schriftlicher "
       "Verwaltungsakt, der im Inland durch die Post übermittelt wird, gilt am vierten Tag nach der Aufgabe zur "
       "Post als bekannt gegeben."),
    _D("faq-de-widerspruch", "faq", "VwGO", "verwaltungsverfahren", "de", "2022-11-07",
       "Wie lege ich Widerspruch gegen einen Bescheid ein?",
       "Der Widerspruch ist innerhalb eines Monats nach Bekanntgabe des Bescheids schriftlich oder zur "
       "Niederschrift bei der Behörde einzulegen, die den Bescheid erlassen hat. Eine Begründung ist hilfreich, "
       "aber nicht vorgeschrieben."),
    _D("faq-en-objection", "faq", "VwGO", "administrative procedure", "en", "2022-11-07",
       "How do I object to an administrative decision?",
       "File an objection in writing with the authority that issued the decision within one month of receiving "
       "it. Giving reasons helps, but is not required."),
    # Informationsfreiheit
    _D("ifg-1", "law", "IFG", "informationsfreiheit", "de", "2006-01-01", "§ 1 Grundsatz",
       "Jeder hat gegenüber den Behörden des Bundes einen Anspruch auf Zugang zu amtlichen Informationen. Die "
       "Behörde kann Auskunft erteilen, Akteneinsicht gewähren oder Informationen in sonstiger Weise "
       "zur Verfügung stellen."),
    _D("ifg-3", "law", "IFG", "informationsfreiheit", "de", "2006-01-01", "§ 3 Schutz besonderer öffentlicher Belange",
       "Der Anspruch besteht nicht, wenn das Bekanntwerden der Information nachteilige Auswirkungen auf "
       "internationale Beziehungen, die öffentliche Sicherheit oder laufende Gerichtsverfahren haben kann."),
    _D("faq-en-foi", "faq", "IFG", "freedom of information", "en", "2021-08-19",
       "How do I make a freedom of information request?",
       "Anyone may ask a federal authority for access to official information. The request needs no reasons and "
       "can be sent by e-mail. Simple requests are answered free of charge, usually within one month."),
    # Steuern und Abgaben
    _D("kraftstg-1", "law", "KraftStG", "steuern", "de", "2012-01-01", "§ 1 Steuergegenstand",
       "Der Kraftfahrzeugsteuer unterliegt das Halten von inländischen Fahrzeugen zum Verkehr auf öffentlichen "
       "Straßen. Die Steuer wird vom Hauptzollamt festgesetzt und per Lastschrift eingezogen."),
    _D("grstg-faq", "faq", "GrStG", "steuern", "de", "2024-01-01", "Was ändert sich bei der Grundsteuer?",
       "Seit 2025 gilt die neue Grundsteuer. Grundlage sind die von den Finanzämtern festgestellten "
       "Grundsteuerwerte; die Gemeinden legen die Hebesätze fest und versenden die Bescheide."),
    _D("hundesteuer-faq", "faq", "Hundesteuersatzung", "steuern", "de", "2020-02-03",
       "Muss ich meinen Hund anmelden?",
       "Ja. Hunde sind innerhalb eines Monats nach Anschaffung oder Zuzug bei der Gemeinde anzumelden. Die "
       "Steuermarke ist am Halsband zu tragen."),
    _D("faq-en-dog-tax", "faq", "Hundesteuersatzung", "taxes", "en", "2020-02-03", "Do I have to register my dog?",
       "Yes. Dogs must be registered with the municipality within one month of getting them or moving here, and "
       "the dog tax is due every year."),
    _D("lastschrift-2022-118", "faq", "KraftStG", "steuern", "de", "2022-07-18", "Rückfrage zur Kfz-Steuer",
       "Sehr geehrte Frau Beispiel, für die Lastschrift der Kraftfahrzeugsteuer haben wir Ihr Konto mit der IBAN "
       "DE89 3704 0044 0532 0130 00 hinterlegt. Bei Rückfragen erreichen Sie uns unter 0228 99 123-4567 oder "
       "kfz-steuer@zoll.example.de."),
    # Fahrzeuge
    _D("faq-de-zulassung", "faq", "FZV", "fahrzeuge", "de", "2021-10-11", "Wie melde ich ein Fahrzeug an?",
       "Für die Zulassung benötigen Sie die Zulassungsbescheinigung Teil I und II, den Nachweis der "
       "Haftpflichtversicherung, ein SEPA-Lastschriftmandat für die Kraftfahrzeugsteuer und Ihren Ausweis. Die "
       "Zulassung ist auch online möglich."),
    _D("faq-en-vehicle", "faq", "FZV", "vehicles", "en", "2021-10-11", "How do I register a car?",
       "Bring the vehicle registration certificates, proof of liability insurance, a direct debit mandate for "
       "the vehicle tax and your identity card to the vehicle registration office. Online registration is also "
       "possible."),
    # Familie und Soziales
    _D("beeg-1", "law", "BEEG", "familie", "de", "2007-01-01", "§ 1 Berechtigte",
       "Anspruch auf Elterngeld hat, wer seinen Wohnsitz in Deutschland hat, mit seinem Kind in einem Haushalt "
       "lebt, dieses Kind selbst betreut und erzieht und keine oder keine volle Erwerbstätigkeit ausübt."),
    _D("faq-en-parental-allowance", "faq", "BEEG", "family", "en", "2023-07-24", "Who receives parental allowance?",
       "Parents who live in Germany, care for their child themselves and work no more than 32 hours a week can "
       "receive parental allowance. It replaces part of the income lost after the birth."),
    _D("faq-de-kindergeld", "faq", "EStG", "familie", "de", "2023-01-09", "Wie beantrage ich Kindergeld?",
       "Kindergeld beantragen Sie schriftlich oder online bei der Familienkasse. Sie brauchen die "
       "Steuer-Identifikationsnummern von sich und Ihrem Kind. Rückwirkend wird Kindergeld für sechs Monate gezahlt."),
    _D("sgb2-7", "law", "SGB II", "soziales", "de", "2005-01-01", "§ 7 Leistungsberechtigte",
       "Leistungen erhalten Personen, die das 15. Lebensjahr vollendet und die Altersgrenze noch nicht erreicht "
       "haben, erwerbsfähig und hilfebedürftig sind und ihren gewöhnlichen Aufenthalt in Deutschland haben."),
    _D("request-en-2024-031", "faq", "SGB II", "social benefits", "en", "2024-03-05",
       "Citizen request about a benefit payment",
       "Request from Jane Doe (jane.doe@example.com, +44 20 7946 0958): my benefit payment for March has not "
       "arrived. Please transfer it to my account GB82 WEST 1234 5698 7654 32. Answer: the payment was made on "
       "4 March; please check with your bank."),
    # Digitale Verwaltung
    _D("ozg-1", "law", "OZG", "digitalisierung", "de", "2017-08-18", "§ 1 Portalverbund",
       "Bund und Länder bieten ihre Verwaltungsleistungen auch elektronisch über Verwaltungsportale an und "
       "verknüpfen ihre Portale zu einem Portalverbund."),
    _D("bitv-faq", "faq", "BITV 2.0", "barrierefreiheit", "de", "2019-05-25",
       "Müssen Behördenwebsites barrierefrei sein?",
       "Ja. Öffentliche Stellen gestalten ihre Websites und mobilen Anwendungen barrierefrei, veröffentlichen eine "
       "Erklärung zur Barrierefreiheit und bieten einen Feedback-Mechanismus an."),
    _D("faq-en-accessibility", "faq", "BITV 2.0", "accessibility", "en", "2019-05-25",
       "Do public sector websites have to be accessible?",
       "Yes. Public bodies must make their websites and mobile apps accessible, publish an accessibility "
       "statement and offer a way to report barriers."),
    _D("faq-en-procurement", "faq", "GWB", "procurement", "en", "2022-01-01",
       "When must a public contract be advertised across the EU?",
       "Contracts whose estimated value exceeds the EU thresholds must be advertised in the Official Journal of "
       "the European Union. Below the thresholds, national procurement rules apply."),
    _D("kontakt-datenschutz", "faq", "BDSG", "datenschutz", "de", "2020-09-01", "Kontakt Datenschutzbeauftragte",
       "Unsere behördliche Datenschutzbeauftragte erreichen Sie unter datenschutz@stadt-musterhausen.example.de "
       "oder telefonisch unter +49 6221 987654. Bitte senden Sie keine Gesundheitsdaten per unverschlüsselter "
       "E-Mail."),
    # Boilerplate, which the quality stages should drop
    _D("portal-navigation", "faq", "", "navigation", "de", "2020-01-01", "Startseite",
       "Startseite | Kontakt | Impressum | Datenschutz | Barrierefreiheit | Leichte Sprache | Gebärdensprache"),
    _D("platzhalter-1", "faq", "", "navigation", "de", "2020-01-01", "Platzhalter", "Text folgt."),
)


def load_sample_corpus(context: SourceContext) -> dict[str, Any]:
    """Upsert the sample corpus into the documents table and the Chroma collection; say what is there."""
    ensure_documents_table(context.source_database_url, context.documents_table)
    rows = _load_postgres(context)
    records = _load_chroma(context)
    summary = {
        "documents": len(SAMPLE_DOCUMENTS),
        "postgres": {"table": context.documents_table.table, "rows": rows},
        "chroma": {"collection": COLLECTION, "records": records},
    }
    logger.info("Loaded the sample corpus: %s", summary)
    return summary


def _load_postgres(context: SourceContext) -> int:
    """Upsert every sample document as a row; return the table's row count."""
    table = context.documents_table
    columns = [table.id, table.title, table.content, table.metadata, table.created_at]
    statement = sql.SQL(
        "INSERT INTO {table} ({columns}) VALUES %s ON CONFLICT ({id}) DO UPDATE SET {updates}"
    ).format(
        table=sql.Identifier(table.table),
        columns=sql.SQL(", ").join(map(sql.Identifier, columns)),
        id=sql.Identifier(table.id),
        updates=sql.SQL(", ").join(
            sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(name)) for name in columns[1:]
        ),
    )
    values = [(doc.id, doc.title, doc.content, json.dumps(doc.metadata), doc.created_at) for doc in SAMPLE_DOCUMENTS]
    conn = psycopg2.connect(context.source_database_url)
    try:
        with conn, conn.cursor() as cursor:
            execute_values(cursor, statement.as_string(cursor), values)
            cursor.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table.table)))
            return cursor.fetchone()[0]
    finally:
        conn.close()


def _load_chroma(context: SourceContext) -> int:
    """Upsert every sample document into the Chroma collection; return its record count."""
    collection = chroma_client(context).get_or_create_collection(
        COLLECTION, embedding_function=embedding_function(), configuration={"hnsw": {"space": "cosine"}}
    )
    collection.upsert(
        ids=[doc.id for doc in SAMPLE_DOCUMENTS],
        documents=[doc.content for doc in SAMPLE_DOCUMENTS],
        metadatas=[{**doc.metadata, "title": doc.title, "created_at": doc.created_at} for doc in SAMPLE_DOCUMENTS],
    )
    return collection.count()


def main() -> int:
    """Load the sample corpus into the stores named by Clara's settings and print what was loaded."""
    try:
        current = clara_settings.load()
    except clara_settings.SettingsError as error:
        print(error, file=sys.stderr)
        return 2
    clara_settings.configure_logging(current)
    summary = load_sample_corpus(context_from_settings(current))
    print(f"Sample corpus: {summary['documents']} documents")
    print(f"  PostgreSQL table {summary['postgres']['table']}: {summary['postgres']['rows']} rows")
    print(f"  Chroma collection {summary['chroma']['collection']}: {summary['chroma']['records']} records")
    return 0


if __name__ == "__main__":
    sys.exit(main())
