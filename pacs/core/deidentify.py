"""De-identification: the PS3.15 Annex E Basic Application Level Confidentiality Profile.

Pure: a pydicom ``Dataset`` (or an encoded Part 10 file) in, its de-identified
copy out. No I/O, no network; the ``pacs deidentify`` command reads the study
from the archive and writes or sends what this module makes.

What it does to every instance (PS3.15 E.1.1 and E.2):

- Every attribute that Table E.1-1 lists is removed (X), emptied (Z), given a
  dummy value (D), or its UIDs replaced (U), wherever it occurs, in the main
  data set or in any item of any sequence. The table is data below
  (``BASIC_PROFILE``), one line per attribute, from **DICOM PS3.15 2024b**.
- Combined actions (X/Z, X/D, X/Z/D, Z/D, X/Z/U*) keep an attribute only where
  the instance's IOD requires it (``_REQUIRED``): a Type 1 attribute gets a dummy,
  a Type 2 one an empty value, anything else is removed. References in X/Z/U*
  sequences are kept with their UIDs replaced, so that a localizer or a derived
  image still points at its sources within the de-identified study (Orthanc
  does the same when it updates references, its default since 1.9.4).
- UIDs (U) are replaced by ``2.25.`` UIDs made from a keyed hash of the
  original (PS3.5 B.2): the same original UID gives the same new UID in every
  instance and every attribute, so references within the study stay valid, and
  never the original. Patient ID and Patient's Name become a stable pseudonym,
  or the values the operator gives.
- Private attributes are removed (the Retain Safe Private Option is not
  offered), and so are curves (50xx) and whole overlay planes (60xx): the table
  lists only Overlay Data and Comments, but a plane without its data is invalid.
  Group lengths go too (they would be wrong afterwards).
- Patient Identity Removed (0012,0062) becomes YES; De-identification Method
  (0012,0063) and its Code Sequence (0012,0064) name the profile and options
  (CID 7050); Longitudinal Temporal Information Modified (0028,0303) says
  MODIFIED or REMOVED.
- Pixel data is never altered. An instance whose Burned In Annotation (0028,0301)
  is YES, or whose SOP class often carries burned-in text (Secondary Capture,
  ultrasound) without saying NO, is refused unless ``allow_burned_in``.

Options (PS3.15 E.3), each adding its code to the Code Sequence:

- Retain Longitudinal Temporal Information with Modified Dates (113107): every
  date (DA, and the date part of DT) is shifted by a number of days fixed per
  patient or per study; times are kept. Without it, dates are removed as the
  table says, and dates the table does not list are emptied (PS3.15 E.1.1
  Note 4: dates are handled by their VR).
- Retain Patient Characteristics (113108): sex, age, size, weight, ethnic group,
  smoking and pregnancy status kept; allergies, patient state, pre-medication
  and special needs cleaned. Patient's Age is added from the birth and study
  dates when the instance lacks it (E.1.1 note to step 3).
- Clean Descriptors (113105): descriptions and comments are kept, cleaned of
  the names, identifiers and dates found in the instance (each replaced by as
  many ``*``), instead of removed.
"""

from __future__ import annotations

import datetime
import enum
import hashlib
import hmac
import re
import secrets
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

from pydicom import config as pydicom_config
from pydicom import dcmread
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement, empty_value_for_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import UID, ImplicitVRLittleEndian

from pacs import __version__
from pacs.core.encoding import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from pacs.errors import InvalidDatasetError, PacsError

TABLE_EDITION = "PS3.15 2024b"
"""The edition of the standard whose Table E.1-1 ``BASIC_PROFILE`` follows."""

# PS3.15 2024b Table E.1-1, Basic Profile column, one row per attribute. The
# option columns this module implements follow the action: "P:K"/"P:C" for the
# Retain Patient Characteristics Option, "D:C" for the Clean Descriptors Option.
# (The Retain Longitudinal Temporal Information Options apply to every date
# and time, so they are not repeated per row.) The keyword is pydicom's, and a
# test checks that it names the tag. Rows with ranges or the private groups
# are not here; see _MASKED_RULES and Deidentifier._element.
_TABLE_E_1_1 = """
    (0000,1000)  X               AffectedSOPInstanceUID
    (0000,1001)  U               RequestedSOPInstanceUID
    (0002,0003)  U               MediaStorageSOPInstanceUID
    (0004,1511)  U               ReferencedSOPInstanceUIDInFile
    (0008,0012)  X/D             InstanceCreationDate
    (0008,0013)  X/Z/D           InstanceCreationTime
    (0008,0014)  U               InstanceCreatorUID
    (0008,0015)  X               InstanceCoercionDateTime
    (0008,0017)  U               AcquisitionUID
    (0008,0018)  U               SOPInstanceUID
    (0008,0019)  U               PyramidUID
    (0008,0020)  Z               StudyDate
    (0008,0021)  X/D             SeriesDate
    (0008,0022)  X/Z             AcquisitionDate
    (0008,0023)  Z/D             ContentDate
    (0008,0024)  X               OverlayDate
    (0008,0025)  X               CurveDate
    (0008,002A)  X/Z/D           AcquisitionDateTime
    (0008,0030)  Z               StudyTime
    (0008,0031)  X/D             SeriesTime
    (0008,0032)  X/Z             AcquisitionTime
    (0008,0033)  Z/D             ContentTime
    (0008,0034)  X               OverlayTime
    (0008,0035)  X               CurveTime
    (0008,0050)  Z               AccessionNumber
    (0008,0054)  X               RetrieveAETitle
    (0008,0055)  X               StationAETitle
    (0008,0058)  U               FailedSOPInstanceUIDList
    (0008,0080)  X/Z/D           InstitutionName
    (0008,0081)  X               InstitutionAddress
    (0008,0082)  X/Z/D           InstitutionCodeSequence
    (0008,0090)  Z               ReferringPhysicianName
    (0008,0092)  X               ReferringPhysicianAddress
    (0008,0094)  X               ReferringPhysicianTelephoneNumbers
    (0008,0096)  X               ReferringPhysicianIdentificationSequence
    (0008,009C)  Z               ConsultingPhysicianName
    (0008,009D)  X               ConsultingPhysicianIdentificationSequence
    (0008,0106)  D               ContextGroupVersion
    (0008,0107)  D               ContextGroupLocalVersion
    (0008,0201)  X               TimezoneOffsetFromUTC
    (0008,1000)  X               NetworkID
    (0008,1010)  X/Z/D           StationName
    (0008,1030)  X      D:C      StudyDescription
    (0008,103E)  X      D:C      SeriesDescription
    (0008,1040)  X               InstitutionalDepartmentName
    (0008,1041)  X               InstitutionalDepartmentTypeCodeSequence
    (0008,1048)  X               PhysiciansOfRecord
    (0008,1049)  X               PhysiciansOfRecordIdentificationSequence
    (0008,1050)  X               PerformingPhysicianName
    (0008,1052)  X               PerformingPhysicianIdentificationSequence
    (0008,1060)  X               NameOfPhysiciansReadingStudy
    (0008,1062)  X               PhysiciansReadingStudyIdentificationSequence
    (0008,1070)  X/Z/D           OperatorsName
    (0008,1072)  X/D             OperatorIdentificationSequence
    (0008,1080)  X      D:C      AdmittingDiagnosesDescription
    (0008,1084)  X      D:C      AdmittingDiagnosesCodeSequence
    (0008,1088)  X      D:C      PyramidDescription
    (0008,1110)  X/Z             ReferencedStudySequence
    (0008,1111)  X/Z/D           ReferencedPerformedProcedureStepSequence
    (0008,1120)  X               ReferencedPatientSequence
    (0008,1140)  X/Z/U*          ReferencedImageSequence
    (0008,1155)  U               ReferencedSOPInstanceUID
    (0008,1195)  U               TransactionUID
    (0008,2111)  X      D:C      DerivationDescription
    (0008,2112)  X/Z/U*          SourceImageSequence
    (0008,3010)  U               IrradiationEventUID
    (0008,4000)  X      D:C      IdentifyingComments
    (0010,0010)  Z               PatientName
    (0010,0020)  Z/D             PatientID
    (0010,0021)  X               IssuerOfPatientID
    (0010,0030)  Z               PatientBirthDate
    (0010,0032)  X               PatientBirthTime
    (0010,0040)  Z      P:K      PatientSex
    (0010,0050)  X               PatientInsurancePlanCodeSequence
    (0010,0101)  X               PatientPrimaryLanguageCodeSequence
    (0010,0102)  X               PatientPrimaryLanguageModifierCodeSequence
    (0010,1000)  X               OtherPatientIDs
    (0010,1001)  X               OtherPatientNames
    (0010,1002)  X               OtherPatientIDsSequence
    (0010,1005)  X               PatientBirthName
    (0010,1010)  X      P:K      PatientAge
    (0010,1020)  X      P:K      PatientSize
    (0010,1030)  X      P:K      PatientWeight
    (0010,1040)  X               PatientAddress
    (0010,1050)  X               InsurancePlanIdentification
    (0010,1060)  X               PatientMotherBirthName
    (0010,1080)  X               MilitaryRank
    (0010,1081)  X               BranchOfService
    (0010,1090)  X               MedicalRecordLocator
    (0010,1100)  X               ReferencedPatientPhotoSequence
    (0010,2000)  X      D:C      MedicalAlerts
    (0010,2110)  X      P:C D:C  Allergies
    (0010,2150)  X               CountryOfResidence
    (0010,2152)  X               RegionOfResidence
    (0010,2154)  X               PatientTelephoneNumbers
    (0010,2155)  X               PatientTelecomInformation
    (0010,2160)  X      P:K      EthnicGroup
    (0010,2180)  X      D:C      Occupation
    (0010,21A0)  X      P:K      SmokingStatus
    (0010,21B0)  X      D:C      AdditionalPatientHistory
    (0010,21C0)  X      P:K      PregnancyStatus
    (0010,21D0)  X               LastMenstrualDate
    (0010,21F0)  X               PatientReligiousPreference
    (0010,2203)  X/Z    P:K      PatientSexNeutered
    (0010,2297)  X               ResponsiblePerson
    (0010,2299)  X               ResponsibleOrganization
    (0010,4000)  X      D:C      PatientComments
    (0012,0010)  D               ClinicalTrialSponsorName
    (0012,0020)  D               ClinicalTrialProtocolID
    (0012,0021)  Z               ClinicalTrialProtocolName
    (0012,0022)  X               IssuerOfClinicalTrialProtocolID
    (0012,0023)  X               OtherClinicalTrialProtocolIDsSequence
    (0012,0030)  Z               ClinicalTrialSiteID
    (0012,0031)  Z               ClinicalTrialSiteName
    (0012,0032)  X               IssuerOfClinicalTrialSiteID
    (0012,0040)  D               ClinicalTrialSubjectID
    (0012,0041)  X               IssuerOfClinicalTrialSubjectID
    (0012,0042)  D               ClinicalTrialSubjectReadingID
    (0012,0043)  X               IssuerOfClinicalTrialSubjectReadingID
    (0012,0050)  Z               ClinicalTrialTimePointID
    (0012,0051)  X      D:C      ClinicalTrialTimePointDescription
    (0012,0055)  X               IssuerOfClinicalTrialTimePointID
    (0012,0060)  Z               ClinicalTrialCoordinatingCenterName
    (0012,0071)  X               ClinicalTrialSeriesID
    (0012,0072)  X      D:C      ClinicalTrialSeriesDescription
    (0012,0073)  X               IssuerOfClinicalTrialSeriesID
    (0012,0081)  D               ClinicalTrialProtocolEthicsCommitteeName
    (0012,0082)  X               ClinicalTrialProtocolEthicsCommitteeApprovalNumber
    (0012,0086)  X               EthicsCommitteeApprovalEffectivenessStartDate
    (0012,0087)  X               EthicsCommitteeApprovalEffectivenessEndDate
    (0014,407C)  X               CalibrationTime
    (0014,407E)  X               CalibrationDate
    (0016,002B)  X      D:C      MakerNote
    (0016,004B)  X      D:C      DeviceSettingDescription
    (0016,004D)  X               CameraOwnerName
    (0016,004E)  X               LensSpecification
    (0016,004F)  X               LensMake
    (0016,0050)  X               LensModel
    (0016,0051)  X               LensSerialNumber
    (0016,0070)  X               GPSVersionID
    (0016,0071)  X               GPSLatitudeRef
    (0016,0072)  X               GPSLatitude
    (0016,0073)  X               GPSLongitudeRef
    (0016,0074)  X               GPSLongitude
    (0016,0075)  X               GPSAltitudeRef
    (0016,0076)  X               GPSAltitude
    (0016,0077)  X               GPSTimeStamp
    (0016,0078)  X               GPSSatellites
    (0016,0079)  X               GPSStatus
    (0016,007A)  X               GPSMeasureMode
    (0016,007B)  X               GPSDOP
    (0016,007C)  X               GPSSpeedRef
    (0016,007D)  X               GPSSpeed
    (0016,007E)  X               GPSTrackRef
    (0016,007F)  X               GPSTrack
    (0016,0080)  X               GPSImgDirectionRef
    (0016,0081)  X               GPSImgDirection
    (0016,0082)  X               GPSMapDatum
    (0016,0083)  X               GPSDestLatitudeRef
    (0016,0084)  X               GPSDestLatitude
    (0016,0085)  X               GPSDestLongitudeRef
    (0016,0086)  X               GPSDestLongitude
    (0016,0087)  X               GPSDestBearingRef
    (0016,0088)  X               GPSDestBearing
    (0016,0089)  X               GPSDestDistanceRef
    (0016,008A)  X               GPSDestDistance
    (0016,008B)  X               GPSProcessingMethod
    (0016,008C)  X               GPSAreaInformation
    (0016,008D)  X               GPSDateStamp
    (0016,008E)  X               GPSDifferential
    (0018,0010)  Z/D    D:C      ContrastBolusAgent
    (0018,0027)  X               InterventionDrugStopTime
    (0018,0035)  X               InterventionDrugStartTime
    (0018,1000)  X/Z/D           DeviceSerialNumber
    (0018,1002)  U               DeviceUID
    (0018,1004)  X               PlateID
    (0018,1005)  X               GeneratorID
    (0018,1007)  X               CassetteID
    (0018,1008)  X               GantryID
    (0018,1009)  X               UniqueDeviceIdentifier
    (0018,100A)  X               UDISequence
    (0018,100B)  U               ManufacturerDeviceClassUID
    (0018,1012)  X               DateOfSecondaryCapture
    (0018,1014)  X               TimeOfSecondaryCapture
    (0018,1030)  X/D    D:C      ProtocolName
    (0018,1042)  X               ContrastBolusStartTime
    (0018,1043)  X               ContrastBolusStopTime
    (0018,1072)  X               RadiopharmaceuticalStartTime
    (0018,1073)  X               RadiopharmaceuticalStopTime
    (0018,1078)  X               RadiopharmaceuticalStartDateTime
    (0018,1079)  X               RadiopharmaceuticalStopDateTime
    (0018,11BB)  D      D:C      AcquisitionFieldOfViewLabel
    (0018,1200)  X               DateOfLastCalibration
    (0018,1201)  X               TimeOfLastCalibration
    (0018,1202)  X               DateTimeOfLastCalibration
    (0018,1203)  Z               CalibrationDateTime
    (0018,1204)  X               DateOfManufacture
    (0018,1205)  X               DateOfInstallation
    (0018,1400)  X/D    D:C      AcquisitionDeviceProcessingDescription
    (0018,2042)  U               TargetUID
    (0018,4000)  X      D:C      AcquisitionComments
    (0018,5011)  X               TransducerIdentificationSequence
    (0018,700A)  X/D             DetectorID
    (0018,700C)  X/D             DateOfLastDetectorCalibration
    (0018,700E)  X/D             TimeOfLastDetectorCalibration
    (0018,9074)  D               FrameAcquisitionDateTime
    (0018,9151)  D               FrameReferenceDateTime
    (0018,9185)  X      D:C      RespiratoryMotionCompensationTechniqueDescription
    (0018,9367)  D               XRaySourceID
    (0018,9369)  D               SourceStartDateTime
    (0018,936A)  D               SourceEndDateTime
    (0018,9371)  D               XRayDetectorID
    (0018,9373)  X               XRayDetectorLabel
    (0018,937B)  X      D:C      MultienergyAcquisitionDescription
    (0018,937F)  X      D:C      DecompositionDescription
    (0018,9424)  X      D:C      AcquisitionProtocolDescription
    (0018,9516)  X/D             StartAcquisitionDateTime
    (0018,9517)  X/D             EndAcquisitionDateTime
    (0018,9623)  D               FunctionalSyncPulse
    (0018,9701)  D               DecayCorrectionDateTime
    (0018,9804)  D               ExclusionStartDateTime
    (0018,9919)  Z/D             InstructionPerformedDateTime
    (0018,9937)  X      D:C      RequestedSeriesDescription
    (0018,A002)  X               ContributionDateTime
    (0018,A003)  X      D:C      ContributionDescription
    (0020,000D)  U               StudyInstanceUID
    (0020,000E)  U               SeriesInstanceUID
    (0020,0010)  Z               StudyID
    (0020,0027)  X      D:C      PyramidLabel
    (0020,0052)  U               FrameOfReferenceUID
    (0020,0200)  U               SynchronizationFrameOfReferenceUID
    (0020,3401)  X               ModifyingDeviceID
    (0020,3403)  X               ModifiedImageDate
    (0020,3405)  X               ModifiedImageTime
    (0020,3406)  X               ModifiedImageDescription
    (0020,4000)  X      D:C      ImageComments
    (0020,9158)  X      D:C      FrameComments
    (0020,9161)  U               ConcatenationUID
    (0020,9164)  U               DimensionOrganizationUID
    (0028,1199)  U               PaletteColorLookupTableUID
    (0028,1214)  U               LargePaletteColorLookupTableUID
    (0028,4000)  X               ImagePresentationComments
    (0032,0012)  X               StudyIDIssuer
    (0032,0032)  X               StudyVerifiedDate
    (0032,0033)  X               StudyVerifiedTime
    (0032,0034)  X               StudyReadDate
    (0032,0035)  X               StudyReadTime
    (0032,1000)  X               ScheduledStudyStartDate
    (0032,1001)  X               ScheduledStudyStartTime
    (0032,1010)  X               ScheduledStudyStopDate
    (0032,1011)  X               ScheduledStudyStopTime
    (0032,1020)  X               ScheduledStudyLocation
    (0032,1021)  X               ScheduledStudyLocationAETitle
    (0032,1030)  X      D:C      ReasonForStudy
    (0032,1032)  X               RequestingPhysician
    (0032,1033)  X               RequestingService
    (0032,1040)  X               StudyArrivalDate
    (0032,1041)  X               StudyArrivalTime
    (0032,1050)  X               StudyCompletionDate
    (0032,1051)  X               StudyCompletionTime
    (0032,1060)  X/Z    D:C      RequestedProcedureDescription
    (0032,1066)  X      D:C      ReasonForVisit
    (0032,1067)  X      D:C      ReasonForVisitCodeSequence
    (0032,1070)  X      D:C      RequestedContrastAgent
    (0032,4000)  X      D:C      StudyComments
    (0034,0001)  D               FlowIdentifierSequence
    (0034,0002)  D               FlowIdentifier
    (0034,0005)  D               SourceIdentifier
    (0034,0007)  D               FrameOriginTimestamp
    (0038,0004)  X               ReferencedPatientAliasSequence
    (0038,0010)  X               AdmissionID
    (0038,0011)  X               IssuerOfAdmissionID
    (0038,0014)  X               IssuerOfAdmissionIDSequence
    (0038,001A)  X               ScheduledAdmissionDate
    (0038,001B)  X               ScheduledAdmissionTime
    (0038,001C)  X               ScheduledDischargeDate
    (0038,001D)  X               ScheduledDischargeTime
    (0038,001E)  X               ScheduledPatientInstitutionResidence
    (0038,0020)  X               AdmittingDate
    (0038,0021)  X               AdmittingTime
    (0038,0030)  X               DischargeDate
    (0038,0032)  X               DischargeTime
    (0038,0040)  X      D:C      DischargeDiagnosisDescription
    (0038,0050)  X      P:C      SpecialNeeds
    (0038,0060)  X               ServiceEpisodeID
    (0038,0061)  X               IssuerOfServiceEpisodeID
    (0038,0062)  X      D:C      ServiceEpisodeDescription
    (0038,0064)  X               IssuerOfServiceEpisodeIDSequence
    (0038,0300)  X               CurrentPatientLocation
    (0038,0400)  X               PatientInstitutionResidence
    (0038,0500)  X      P:C D:C  PatientState
    (0038,4000)  X      D:C      VisitComments
    (003A,0310)  U               MultiplexGroupUID
    (003A,0314)  D               ImpedanceMeasurementDateTime
    (003A,0329)  X      D:C      WaveformFilterDescription
    (003A,032B)  X      D:C      FilterLookupTableDescription
    (0040,0001)  X               ScheduledStationAETitle
    (0040,0002)  X               ScheduledProcedureStepStartDate
    (0040,0003)  X               ScheduledProcedureStepStartTime
    (0040,0004)  X               ScheduledProcedureStepEndDate
    (0040,0005)  X               ScheduledProcedureStepEndTime
    (0040,0006)  X               ScheduledPerformingPhysicianName
    (0040,0007)  X      D:C      ScheduledProcedureStepDescription
    (0040,0009)  X               ScheduledProcedureStepID
    (0040,000B)  X               ScheduledPerformingPhysicianIdentificationSequence
    (0040,0010)  X               ScheduledStationName
    (0040,0011)  X               ScheduledProcedureStepLocation
    (0040,0012)  X      P:C      PreMedication
    (0040,0241)  X               PerformedStationAETitle
    (0040,0242)  X               PerformedStationName
    (0040,0243)  X               PerformedLocation
    (0040,0244)  X               PerformedProcedureStepStartDate
    (0040,0245)  X               PerformedProcedureStepStartTime
    (0040,0250)  X               PerformedProcedureStepEndDate
    (0040,0251)  X               PerformedProcedureStepEndTime
    (0040,0253)  X               PerformedProcedureStepID
    (0040,0254)  X      D:C      PerformedProcedureStepDescription
    (0040,0275)  X      D:C      RequestAttributesSequence
    (0040,0280)  X      D:C      CommentsOnThePerformedProcedureStep
    (0040,0310)  X      D:C      CommentsOnRadiationDose
    (0040,050A)  X               SpecimenAccessionNumber
    (0040,0512)  D               ContainerIdentifier
    (0040,0513)  Z               IssuerOfTheContainerIdentifierSequence
    (0040,051A)  X      D:C      ContainerDescription
    (0040,0551)  D               SpecimenIdentifier
    (0040,0554)  U               SpecimenUID
    (0040,0555)  X/Z             AcquisitionContextSequence
    (0040,0562)  Z               IssuerOfTheSpecimenIdentifierSequence
    (0040,0600)  X      D:C      SpecimenShortDescription
    (0040,0602)  X      D:C      SpecimenDetailedDescription
    (0040,0610)  Z               SpecimenPreparationSequence
    (0040,06FA)  X               SlideIdentifier
    (0040,1001)  X               RequestedProcedureID
    (0040,1002)  X      D:C      ReasonForTheRequestedProcedure
    (0040,1004)  X               PatientTransportArrangements
    (0040,1005)  X               RequestedProcedureLocation
    (0040,100A)  X      D:C      ReasonForRequestedProcedureCodeSequence
    (0040,1010)  X               NamesOfIntendedRecipientsOfResults
    (0040,1011)  X               IntendedRecipientsOfResultsIdentificationSequence
    (0040,1101)  D               PersonIdentificationCodeSequence
    (0040,1102)  X               PersonAddress
    (0040,1103)  X               PersonTelephoneNumbers
    (0040,1104)  X               PersonTelecomInformation
    (0040,1400)  X      D:C      RequestedProcedureComments
    (0040,2001)  X      D:C      ReasonForTheImagingServiceRequest
    (0040,2004)  X               IssueDateOfImagingServiceRequest
    (0040,2005)  X               IssueTimeOfImagingServiceRequest
    (0040,2008)  X               OrderEnteredBy
    (0040,2009)  X               OrderEntererLocation
    (0040,2010)  X               OrderCallbackPhoneNumber
    (0040,2011)  X               OrderCallbackTelecomInformation
    (0040,2016)  Z               PlacerOrderNumberImagingServiceRequest
    (0040,2017)  Z               FillerOrderNumberImagingServiceRequest
    (0040,2400)  X      D:C      ImagingServiceRequestComments
    (0040,3001)  X               ConfidentialityConstraintOnPatientDataDescription
    (0040,4005)  X               ScheduledProcedureStepStartDateTime
    (0040,4008)  X               ScheduledProcedureStepExpirationDateTime
    (0040,4010)  X               ScheduledProcedureStepModificationDateTime
    (0040,4011)  X               ExpectedCompletionDateTime
    (0040,4023)  U               ReferencedGeneralPurposeScheduledProcedureStepTransactionUID
    (0040,4025)  X               ScheduledStationNameCodeSequence
    (0040,4027)  X               ScheduledStationGeographicLocationCodeSequence
    (0040,4028)  X               PerformedStationNameCodeSequence
    (0040,4030)  X               PerformedStationGeographicLocationCodeSequence
    (0040,4034)  X               ScheduledHumanPerformersSequence
    (0040,4035)  X               ActualHumanPerformersSequence
    (0040,4036)  X               HumanPerformerOrganization
    (0040,4037)  X               HumanPerformerName
    (0040,4050)  X               PerformedProcedureStepStartDateTime
    (0040,4051)  X               PerformedProcedureStepEndDateTime
    (0040,4052)  X               ProcedureStepCancellationDateTime
    (0040,A023)  X               FindingsGroupRecordingDateTrial
    (0040,A024)  X               FindingsGroupRecordingTimeTrial
    (0040,A027)  D               VerifyingOrganization
    (0040,A030)  D               VerificationDateTime
    (0040,A032)  X/D             ObservationDateTime
    (0040,A033)  X               ObservationStartDateTime
    (0040,A073)  D               VerifyingObserverSequence
    (0040,A075)  D               VerifyingObserverName
    (0040,A078)  X               AuthorObserverSequence
    (0040,A07A)  X               ParticipantSequence
    (0040,A07C)  X               CustodialOrganizationSequence
    (0040,A082)  Z               ParticipationDateTime
    (0040,A088)  Z               VerifyingObserverIdentificationCodeSequence
    (0040,A110)  X               DateOfDocumentOrVerbalTransactionTrial
    (0040,A112)  X               TimeOfDocumentCreationOrVerbalTransactionTrial
    (0040,A120)  D               DateTime
    (0040,A121)  D               Date
    (0040,A122)  D               Time
    (0040,A123)  D               PersonName
    (0040,A124)  U               UID
    (0040,A13A)  D               ReferencedDateTime
    (0040,A171)  U               ObservationUID
    (0040,A172)  U               ReferencedObservationUIDTrial
    (0040,A192)  X               ObservationDateTrial
    (0040,A193)  X               ObservationTimeTrial
    (0040,A307)  X               CurrentObserverTrial
    (0040,A352)  X               VerbalSourceTrial
    (0040,A353)  X               AddressTrial
    (0040,A354)  X               TelephoneNumberTrial
    (0040,A358)  X               VerbalSourceIdentifierCodeSequenceTrial
    (0040,A402)  U               ObservationSubjectUIDTrial
    (0040,A730)  D               ContentSequence
    (0040,DB06)  X               TemplateVersion
    (0040,DB07)  X               TemplateLocalVersion
    (0040,DB0C)  U               TemplateExtensionOrganizationUID
    (0040,DB0D)  U               TemplateExtensionCreatorUID
    (0040,E004)  X               HL7DocumentEffectiveTime
    (0042,0011)  D               EncapsulatedDocument
    (0044,0004)  X               ApprovalStatusDateTime
    (0044,000B)  X               ProductExpirationDateTime
    (0044,0010)  X               SubstanceAdministrationDateTime
    (0044,0104)  D               AssertionDateTime
    (0044,0105)  X               AssertionExpirationDateTime
    (0050,001B)  X               ContainerComponentID
    (0050,0020)  X               DeviceDescription
    (0050,0021)  X      D:C      LongDeviceDescription
    (0062,0021)  U               TrackingUID
    (0064,0003)  U               SourceFrameOfReferenceUID
    (0068,6226)  D               EffectiveDateTime
    (0068,6270)  D               InformationIssueDateTime
    (006A,0003)  D               AnnotationGroupUID
    (006A,0005)  D      D:C      AnnotationGroupLabel
    (006A,0006)  X      D:C      AnnotationGroupDescription
    (0070,0001)  D               GraphicAnnotationSequence
    (0070,0082)  X               PresentationCreationDate
    (0070,0083)  X               PresentationCreationTime
    (0070,0084)  Z/D             ContentCreatorName
    (0070,0086)  X               ContentCreatorIdentificationCodeSequence
    (0070,031A)  U               FiducialUID
    (0070,1101)  U               PresentationDisplayCollectionUID
    (0070,1102)  U               PresentationSequenceCollectionUID
    (0072,000A)  D               HangingProtocolCreationDateTime
    (0072,005E)  D               SelectorAEValue
    (0072,005F)  D               SelectorASValue
    (0072,0061)  D               SelectorDAValue
    (0072,0063)  D               SelectorDTValue
    (0072,0065)  D               SelectorOBValue
    (0072,0066)  D               SelectorLOValue
    (0072,0068)  D               SelectorLTValue
    (0072,006A)  D               SelectorPNValue
    (0072,006B)  D               SelectorTMValue
    (0072,006C)  D               SelectorSHValue
    (0072,006D)  D               SelectorUNValue
    (0072,006E)  D               SelectorSTValue
    (0072,0070)  D               SelectorUTValue
    (0072,0071)  D               SelectorURValue
    (0074,1234)  X               ReceivingAE
    (0074,1236)  X               RequestingAE
    (0088,0140)  U               StorageMediaFileSetUID
    (0088,0200)  X               IconImageSequence
    (0088,0904)  X               TopicTitle
    (0088,0906)  X               TopicSubject
    (0088,0910)  X               TopicAuthor
    (0088,0912)  X               TopicKeywords
    (0100,0420)  X               SOPAuthorizationDateTime
    (0400,0100)  U               DigitalSignatureUID
    (0400,0105)  D               DigitalSignatureDateTime
    (0400,0115)  D               CertificateOfSigner
    (0400,0310)  X               CertifiedTimestamp
    (0400,0402)  X               ReferencedDigitalSignatureSequence
    (0400,0403)  X               ReferencedSOPInstanceMACSequence
    (0400,0404)  X               MAC
    (0400,0550)  X               ModifiedAttributesSequence
    (0400,0551)  X               NonconformingModifiedAttributesSequence
    (0400,0552)  X               NonconformingDataElementValue
    (0400,0561)  X               OriginalAttributesSequence
    (0400,0562)  D               AttributeModificationDateTime
    (0400,0563)  D               ModifyingSystem
    (0400,0564)  Z               SourceOfPreviousValues
    (0400,0565)  D               ReasonForTheAttributeModification
    (0400,0600)  X               InstanceOriginStatus
    (2030,0020)  X               TextString
    (2100,0040)  X               CreationDate
    (2100,0050)  X               CreationTime
    (2100,0070)  X               Originator
    (2100,0140)  D               DestinationAE
    (2200,0002)  X/Z    D:C      LabelText
    (2200,0005)  X/Z             BarcodeValue
    (3002,0121)  X      D:C      PositionAcquisitionTemplateName
    (3002,0123)  X      D:C      PositionAcquisitionTemplateDescription
    (3006,0002)  D      D:C      StructureSetLabel
    (3006,0004)  X      D:C      StructureSetName
    (3006,0006)  X      D:C      StructureSetDescription
    (3006,0008)  Z               StructureSetDate
    (3006,0009)  Z               StructureSetTime
    (3006,0024)  U               ReferencedFrameOfReferenceUID
    (3006,0026)  Z      D:C      ROIName
    (3006,0028)  X      D:C      ROIDescription
    (3006,002D)  X               ROIDateTime
    (3006,002E)  X               ROIObservationDateTime
    (3006,0038)  X      D:C      ROIGenerationDescription
    (3006,004D)  X               ROICreatorSequence
    (3006,004E)  X               ROIInterpreterSequence
    (3006,0085)  X      D:C      ROIObservationLabel
    (3006,0088)  X      D:C      ROIObservationDescription
    (3006,00A6)  Z               ROIInterpreter
    (3006,00C2)  U               RelatedFrameOfReferenceUID
    (3008,0024)  D               TreatmentControlPointDate
    (3008,0025)  D               TreatmentControlPointTime
    (3008,0054)  X/D             FirstTreatmentDate
    (3008,0056)  X/D             MostRecentTreatmentDate
    (3008,0105)  X/Z             SourceSerialNumber
    (3008,0162)  D               SafePositionExitDate
    (3008,0164)  D               SafePositionExitTime
    (3008,0166)  D               SafePositionReturnDate
    (3008,0168)  D               SafePositionReturnTime
    (3008,0250)  X/D             TreatmentDate
    (3008,0251)  X/D             TreatmentTime
    (300A,0002)  D      D:C      RTPlanLabel
    (300A,0003)  X      D:C      RTPlanName
    (300A,0004)  X      D:C      RTPlanDescription
    (300A,0006)  X/D             RTPlanDate
    (300A,0007)  X/D             RTPlanTime
    (300A,000B)  X      D:C      TreatmentSites
    (300A,000E)  X      D:C      PrescriptionDescription
    (300A,0013)  U               DoseReferenceUID
    (300A,0016)  X      D:C      DoseReferenceDescription
    (300A,0072)  X      D:C      FractionGroupDescription
    (300A,0083)  U               ReferencedDoseReferenceUID
    (300A,00B2)  X/Z             TreatmentMachineName
    (300A,00C3)  X      D:C      BeamDescription
    (300A,00DD)  X      D:C      BolusDescription
    (300A,0196)  X      D:C      FixationDeviceDescription
    (300A,01A6)  X      D:C      ShieldingDeviceDescription
    (300A,01B2)  X      D:C      SetupTechniqueDescription
    (300A,0216)  X               SourceManufacturer
    (300A,022C)  D               SourceStrengthReferenceDate
    (300A,022E)  D               SourceStrengthReferenceTime
    (300A,02EB)  X      D:C      CompensatorDescription
    (300A,0608)  D      D:C      TreatmentPositionGroupLabel
    (300A,0609)  U               TreatmentPositionGroupUID
    (300A,0611)  Z               RTAccessoryHolderSlotID
    (300A,0615)  Z               RTAccessoryDeviceSlotID
    (300A,0619)  D      D:C      RadiationDoseIdentificationLabel
    (300A,0623)  D      D:C      RadiationDoseInVivoMeasurementLabel
    (300A,062A)  D      D:C      RTToleranceSetLabel
    (300A,0650)  U               PatientSetupUID
    (300A,0676)  X      D:C      EquipmentFrameOfReferenceDescription
    (300A,067C)  D      D:C      RadiationGenerationModeLabel
    (300A,067D)  Z      D:C      RadiationGenerationModeDescription
    (300A,0700)  U               TreatmentSessionUID
    (300A,0734)  D      D:C      TreatmentToleranceViolationDescription
    (300A,0736)  D               TreatmentToleranceViolationDateTime
    (300A,073A)  D               RecordedRTControlPointDateTime
    (300A,0741)  D               InterlockDateTime
    (300A,0742)  D      D:C      InterlockDescription
    (300A,0760)  D               OverrideDateTime
    (300A,0783)  D      D:C      InterlockOriginDescription
    (300A,0785)  U               ReferencedTreatmentPositionGroupUID
    (300A,078E)  X      D:C      PatientTreatmentPreparationProcedureParameterDescription
    (300A,0792)  X      D:C      PatientTreatmentPreparationMethodDescription
    (300A,0794)  X      D:C      PatientSetupPhotoDescription
    (300A,079A)  X      D:C      DisplacementReferenceLabel
    (300C,0113)  X      D:C      ReasonForOmissionDescription
    (300C,0127)  D               BeamHoldTransitionDateTime
    (300E,0004)  Z               ReviewDate
    (300E,0005)  Z               ReviewTime
    (300E,0008)  X/Z             ReviewerName
    (3010,0006)  U               ConceptualVolumeUID
    (3010,000B)  U               ReferencedConceptualVolumeUID
    (3010,000F)  Z      D:C      ConceptualVolumeCombinationDescription
    (3010,0013)  U               ConstituentConceptualVolumeUID
    (3010,0015)  U               SourceConceptualVolumeUID
    (3010,0017)  Z      D:C      ConceptualVolumeDescription
    (3010,001B)  Z               DeviceAlternateIdentifier
    (3010,002D)  D               DeviceLabel
    (3010,0031)  U               ReferencedFiducialsUID
    (3010,0033)  D      D:C      UserContentLabel
    (3010,0034)  D      D:C      UserContentLongLabel
    (3010,0035)  D      D:C      EntityLabel
    (3010,0036)  X      D:C      EntityName
    (3010,0037)  X      D:C      EntityDescription
    (3010,0038)  D      D:C      EntityLongLabel
    (3010,003B)  U               RTTreatmentPhaseUID
    (3010,0043)  Z               ManufacturerDeviceIdentifier
    (3010,004C)  X/D             IntendedPhaseStartDate
    (3010,004D)  X/D             IntendedPhaseEndDate
    (3010,0054)  D      D:C      RTPrescriptionLabel
    (3010,0056)  X/D    D:C      RTTreatmentApproachLabel
    (3010,005A)  Z      D:C      RTPhysicianIntentNarrative
    (3010,005C)  Z      D:C      ReasonForSuperseding
    (3010,0061)  X      D:C      PriorTreatmentDoseDescription
    (3010,006E)  U               DosimetricObjectiveUID
    (3010,006F)  U               ReferencedDosimetricObjectiveUID
    (3010,0077)  X/D    D:C      TreatmentSite
    (3010,007A)  Z      D:C      TreatmentTechniqueNotes
    (3010,007B)  Z      D:C      PrescriptionNotes
    (3010,007F)  Z      D:C      FractionationNotes
    (3010,0081)  Z      D:C      PrescriptionNotesSequence
    (3010,0085)  X               IntendedFractionStartTime
    (4000,0010)  X               Arbitrary
    (4000,4000)  X               TextComments
    (4008,0040)  X               ResultsID
    (4008,0042)  X               ResultsIDIssuer
    (4008,0100)  X               InterpretationRecordedDate
    (4008,0101)  X               InterpretationRecordedTime
    (4008,0102)  X               InterpretationRecorder
    (4008,0108)  X               InterpretationTranscriptionDate
    (4008,0109)  X               InterpretationTranscriptionTime
    (4008,010A)  X               InterpretationTranscriber
    (4008,010B)  X      D:C      InterpretationText
    (4008,010C)  X               InterpretationAuthor
    (4008,0111)  X               InterpretationApproverSequence
    (4008,0112)  X               InterpretationApprovalDate
    (4008,0113)  X               InterpretationApprovalTime
    (4008,0114)  X               PhysicianApprovingInterpretation
    (4008,0115)  X      D:C      InterpretationDiagnosisDescription
    (4008,0118)  X               ResultsDistributionListSequence
    (4008,0119)  X               DistributionName
    (4008,011A)  X               DistributionAddress
    (4008,0200)  X               InterpretationID
    (4008,0202)  X               InterpretationIDIssuer
    (4008,0300)  X      D:C      Impressions
    (4008,4000)  X      D:C      ResultsComments
    (FFFA,FFFA)  X               DigitalSignaturesSequence
    (FFFC,FFFC)  X               DataSetTrailingPadding
"""

ACTIONS = ("D", "Z", "X", "K", "C", "U", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*")
"""The action codes of PS3.15 E.1.1 (Table E.1-1a)."""


@dataclass(frozen=True, slots=True)
class Rule:
    """One row of Table E.1-1."""

    tag: int
    keyword: str
    action: str
    """The Basic Profile action."""
    patient_characteristics: str | None = None
    """"K" or "C" under the Retain Patient Characteristics Option."""
    clean_descriptors: bool = False
    """"C" under the Clean Descriptors Option."""


def _parse_table(text: str) -> dict[int, Rule]:
    rules: dict[int, Rule] = {}
    for line in text.strip().splitlines():
        tag_text, action, *rest = line.split()
        tag = int(tag_text.strip("()").replace(",", ""), 16)
        options = [word for word in rest if word[:2] in ("P:", "D:")]
        keyword = rest[-1]
        if action not in ACTIONS or tag in rules:
            raise ValueError(f"bad row in Table E.1-1: {line!r}")
        rules[tag] = Rule(
            tag=tag,
            keyword=keyword,
            action=action,
            patient_characteristics=next((o[2:] for o in options if o[:2] == "P:"), None),
            clean_descriptors="D:C" in options,
        )
    return rules


BASIC_PROFILE: Mapping[int, Rule] = _parse_table(_TABLE_E_1_1)
"""Table E.1-1 by tag: every attribute the profile protects or retains."""

# The table's rows with ranges: "(50xx,xxxx) X Curve Data", and "(60xx,3000) X
# Overlay Data" and "(60xx,4000) X Overlay Comments", widened to the whole plane.
# "(gggg,eeee) where gggg is odd  X  Private attributes" is a test on the group.
_REMOVED_GROUPS = frozenset({0x5000, 0x6000})

# Where an IOD requires an attribute that the table gives a combined action,
# the action it resolves to there: D for Type 1, Z for Type 2 (the PS3.3 module
# named beside each). Elsewhere a combined action is its first letter, which is
# right for the Type 3 use the combination starts from.
_FUNCTIONAL_GROUPS = "functional groups"  # Multi-frame Functional Groups Module IODs
_STRUCTURED_REPORT = "structured report"  # SR Document General Module IODs
_PET = "pet"  # PET Series and PET Image Modules
_REQUIRED: dict[str, dict[str, str]] = {
    # C.7.6.16 Multi-frame Functional Groups (Type 1); C.17.2 SR Document General (Type 1)
    "ContentDate": {_FUNCTIONAL_GROUPS: "D", _STRUCTURED_REPORT: "D"},
    "ContentTime": {_FUNCTIONAL_GROUPS: "D", _STRUCTURED_REPORT: "D"},
    # C.8.13.1 Enhanced MR Image, C.8.15.2 Enhanced CT Image and their kin (Type 1C)
    "AcquisitionDateTime": {_FUNCTIONAL_GROUPS: "D"},
    # C.7.5.2 Enhanced General Equipment (Type 1)
    "DeviceSerialNumber": {_FUNCTIONAL_GROUPS: "D"},
    # C.7.6.14 Acquisition Context (Type 2), mandatory in the enhanced IODs
    "AcquisitionContextSequence": {_FUNCTIONAL_GROUPS: "Z"},
    # C.8.9.1 PET Series (Type 1); C.8.9.4 PET Image (Type 2)
    "SeriesDate": {_PET: "D"},
    "SeriesTime": {_PET: "D"},
    "AcquisitionDate": {_PET: "Z"},
    "AcquisitionTime": {_PET: "Z"},
}

_FUNCTIONAL_GROUP_CLASSES = frozenset(
    {
        "Enhanced CT Image Storage",
        "Legacy Converted Enhanced CT Image Storage",
        "Enhanced MR Image Storage",
        "Enhanced MR Color Image Storage",
        "MR Spectroscopy Storage",
        "Legacy Converted Enhanced MR Image Storage",
        "Enhanced US Volume Storage",
        "Enhanced XA Image Storage",
        "Enhanced XRF Image Storage",
        "X-Ray 3D Angiographic Image Storage",
        "X-Ray 3D Craniofacial Image Storage",
        "Breast Tomosynthesis Image Storage",
        "Breast Projection X-Ray Image Storage - For Presentation",
        "Breast Projection X-Ray Image Storage - For Processing",
        "Intravascular Optical Coherence Tomography Image Storage - For Presentation",
        "Intravascular Optical Coherence Tomography Image Storage - For Processing",
        "Parametric Map Storage",
        "Segmentation Storage",
        "Ophthalmic Tomography Image Storage",
        "VL Whole Slide Microscopy Image Storage",
        "Enhanced PET Image Storage",
        "Legacy Converted Enhanced PET Image Storage",
    }
)
_PET_CLASSES = frozenset({"Positron Emission Tomography Image Storage"})

# SOP classes whose images often carry burned-in patient text although the
# modality does not say so: screen captures and ultrasound (PS3.15 E.1.1 note 5
# to step 2 leaves finding it to the de-identifier).
_BURNED_IN_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
        "1.2.840.10008.5.1.4.1.1.7.1",  # Multi-frame Single Bit Secondary Capture
        "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte Secondary Capture
        "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word Secondary Capture
        "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color Secondary Capture
        "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image Storage
        "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame Image Storage
        "1.2.840.10008.5.1.4.1.1.6",  # Ultrasound Image Storage (Retired)
        "1.2.840.10008.5.1.4.1.1.3",  # Ultrasound Multi-frame Image Storage (Retired)
    }
)

# CID 7050 De-identification Method: (code value, code meaning).
BASIC_PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")
CLEAN_DESCRIPTORS_CODE = ("113105", "Clean Descriptors Option")
MODIFIED_DATES_CODE = (
    "113107",
    "Retain Longitudinal Temporal Information Modified Dates Option",
)
PATIENT_CHARACTERISTICS_CODE = ("113108", "Retain Patient Characteristics Option")

DUMMY_DATE = "19000101"
DUMMY_TIME = "000000"
DUMMY_TEXT = "ANONYMIZED"
_DATE_VRS = frozenset({"DA", "DT"})
_TEXT_VRS = frozenset({"LO", "LT", "SH", "ST", "UC", "UT", "PN"})
_BIRTH = frozenset({"PatientBirthDate", "PatientBirthTime"})
_DUMMY_BINARY = {"OB": 2, "OW": 2, "UN": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
_DUMMY_NUMBER = {"FL", "FD", "SL", "SS", "UL", "US", "SV", "UV", "DS", "IS"}
# Values the Clean Descriptors option looks for in free text besides person names.
_IDENTIFYING = frozenset(
    {
        "PatientID",
        "OtherPatientIDs",
        "IssuerOfPatientID",
        "AccessionNumber",
        "StudyID",
        "InstitutionName",
        "InstitutionAddress",
        "InstitutionalDepartmentName",
        "StationName",
        "DeviceSerialNumber",
        "PatientAddress",
        "PatientTelephoneNumbers",
        "MedicalRecordLocator",
        "AdmissionID",
        "ServiceEpisodeID",
        "RequestedProcedureID",
        "ScheduledProcedureStepID",
        "PerformedProcedureStepID",
        "PlacerOrderNumberImagingServiceRequest",
        "FillerOrderNumberImagingServiceRequest",
        "ReferringPhysicianAddress",
        "ReferringPhysicianTelephoneNumbers",
        "PersonAddress",
        "PersonTelephoneNumbers",
    }
)
_DATE_IN_TEXT = re.compile(
    r"(?<!\d)(?:(?:19|20)\d\d[-./]?[01]\d[-./]?[0-3]\d|[0-3]?\d[-./][01]?\d[-./](?:19|20)\d\d)(?!\d)"
)
_SHIFT_RANGE = (365, 3650)  # derived offsets: one to ten years into the past


class BurnedInAnnotationError(PacsError):
    """The instance may show patient identity in its pixels (PS3.15 E.1.1 step 2 note 5)."""


class DatePolicy(enum.Enum):
    REMOVE = "remove"
    """As the Basic Profile says: dates removed, emptied or replaced by a dummy."""
    SHIFT = "shift"
    """Retain Longitudinal Temporal Information with Modified Dates."""


class OffsetScope(enum.Enum):
    PATIENT = "patient"
    """One offset per patient: every study of the patient keeps its place in time."""
    STUDY = "study"
    """One offset per study."""


@dataclass(frozen=True, slots=True)
class DeidentifyOptions:
    dates: DatePolicy = DatePolicy.REMOVE
    offset_scope: OffsetScope = OffsetScope.PATIENT
    date_offset_days: int | None = None
    """Shift dates by this many days (negative: into the past); ``None`` derives a
    stable offset between one and ten years back from the key and the patient
    (or study)."""
    retain_patient_characteristics: bool = False
    clean_descriptors: bool = False
    allow_burned_in: bool = False
    patient_id: str | None = None
    """Patient ID to give every instance; ``None``: a pseudonym."""
    patient_name: str | None = None
    """Patient's Name to give every instance; ``None``: a pseudonym."""


@dataclass(slots=True)
class PatientPseudonym:
    patient_id: str
    patient_name: str
    date_offset_days: int | None = None


@dataclass(slots=True)
class PseudonymMap:
    """What links the de-identified data back to the patient: the operator keeps
    it (``--mapping FILE``); it never goes into the output.

    ``key`` makes every derived value (UIDs, pseudonyms, date offsets), so that
    de-identifying again with the same map gives the same output.
    """

    key: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    patients: dict[str, PatientPseudonym] = field(default_factory=dict)
    studies: dict[str, dict[str, Any]] = field(default_factory=dict)
    uids: dict[str, str] = field(default_factory=dict)

    FORMAT = "pacs-deidentification-map/1"

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.FORMAT,
            "warning": "Re-identifies the patients below: keep it apart from the data.",
            "key": self.key.hex(),
            "patients": {
                original: {
                    "patient_id": p.patient_id,
                    "patient_name": p.patient_name,
                    "date_offset_days": p.date_offset_days,
                }
                for original, p in sorted(self.patients.items())
            },
            "studies": dict(sorted(self.studies.items())),
            "uids": dict(sorted(self.uids.items())),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PseudonymMap:
        """Raises ``ValueError`` when ``data`` is not such a map."""
        if not isinstance(data, Mapping) or data.get("format") != cls.FORMAT:
            raise ValueError(f"not a de-identification map (format {cls.FORMAT})")
        try:
            return cls(
                key=bytes.fromhex(data["key"]),
                patients={
                    str(original): PatientPseudonym(
                        patient_id=str(p["patient_id"]),
                        patient_name=str(p["patient_name"]),
                        date_offset_days=(
                            None
                            if p.get("date_offset_days") is None
                            else int(p["date_offset_days"])
                        ),
                    )
                    for original, p in data.get("patients", {}).items()
                },
                studies={str(k): dict(v) for k, v in data.get("studies", {}).items()},
                uids={str(k): str(v) for k, v in data.get("uids", {}).items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"malformed de-identification map: {exc!r}") from None


@dataclass(frozen=True, slots=True)
class DeidentifiedInstance:
    """One de-identified instance, encoded as a Part 10 file."""

    data: bytes
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    transfer_syntax_uid: str
    warnings: tuple[str, ...] = ()


def burned_in_risk(dataset: Dataset) -> str | None:
    """Why the pixels of ``dataset`` may show identifying text, or ``None``.

    Burned In Annotation (0028,0301) YES always counts. A Secondary Capture or
    ultrasound image, or a screen capture (Image Type SCREEN SAVE), counts
    unless it states Burned In Annotation NO.
    """
    flag = str(dataset.get("BurnedInAnnotation", "") or "").strip().upper()
    if flag == "YES":
        return "Burned In Annotation (0028,0301) is YES"
    if flag == "NO":
        return None
    sop_class = str(dataset.get("SOPClassUID", "") or "").strip()
    if sop_class in _BURNED_IN_CLASSES:
        return (
            f"it is a {UID(sop_class).name} instance, whose pixels often carry burned-in"
            " patient text, and its Burned In Annotation (0028,0301) does not say NO"
        )
    image_type = [str(v).upper() for v in _values(dataset.get("ImageType"))]
    if "SCREEN SAVE" in image_type:
        return "it is a screen capture (Image Type SCREEN SAVE) not marked Burned In Annotation NO"
    return None


@dataclass(slots=True)
class _Context:
    """What one instance's de-identification needs to know."""

    family: str | None
    offset_days: int | None
    patient_key: str
    patient: PatientPseudonym
    scrub: re.Pattern[str] | None


class Deidentifier:
    """Applies the Basic Profile and the chosen options to the instances of a study.

    One object per run: it remembers (in ``mapping``) every UID it replaced
    and every patient it gave a pseudonym, so that the instances it is given
    stay consistent with each other. Thread-safe.
    """

    def __init__(self, options: DeidentifyOptions, mapping: PseudonymMap | None = None) -> None:
        self.options = options
        self.mapping = mapping if mapping is not None else PseudonymMap()
        self._lock = threading.Lock()

    # -- public --------------------------------------------------------------

    def dataset(self, dataset: Dataset) -> tuple[Dataset, list[str]]:
        """The de-identified copy of ``dataset`` (left unchanged), and warnings.

        Elements that are kept are shared with ``dataset``, not copied (Pixel
        Data included): treat both as read-only afterwards.

        Raises
        ------
        BurnedInAnnotationError
            When ``burned_in_risk`` finds a reason and ``allow_burned_in`` is off.
        InvalidDatasetError
            When the data set has no SOP Class or SOP Instance UID.
        """
        missing = [k for k in ("SOPClassUID", "SOPInstanceUID") if not dataset.get(k)]
        if missing:
            raise InvalidDatasetError(f"the data set has no {' or '.join(missing)}")
        warnings: list[str] = []
        risk = burned_in_risk(dataset)
        if risk is not None:
            if not self.options.allow_burned_in:
                raise BurnedInAnnotationError(
                    f"refused: {risk}; its pixel data would be sent unchanged"
                    " (pass --allow-burned-in to de-identify it anyway)"
                )
            warnings.append(f"pixel data may show patient identity: {risk}")
        context = self._context(dataset)
        out = self._items(dataset, context, clean_text=False)
        self._add_patient(out, dataset, context)
        self._mark(out, dataset)
        original_study = str(dataset.get("StudyInstanceUID", "") or "").strip()
        if original_study:
            with self._lock:
                study = self.mapping.studies.setdefault(original_study, {})
                study["study_instance_uid"] = str(out.StudyInstanceUID)
                study["patient"] = context.patient_key
        return out, warnings

    def part10(self, data: bytes) -> DeidentifiedInstance:
        """De-identify an encoded Part 10 file (as the archive stores it).

        The output keeps the transfer syntax, and so the pixel data byte for
        byte; its File Meta Information and preamble are new (E.1.1 step 7).
        """
        try:
            source = dcmread(BytesIO(data), force=True)
        except (InvalidDicomError, EOFError, ValueError, OSError) as exc:
            raise InvalidDatasetError(f"cannot be parsed: {exc}") from None
        meta = getattr(source, "file_meta", None)
        transfer_syntax = str(getattr(meta, "TransferSyntaxUID", None) or ImplicitVRLittleEndian)
        out, warnings = self.dataset(source)
        file_meta = FileMetaDataset()
        file_meta.FileMetaInformationVersion = b"\x00\x01"
        file_meta.MediaStorageSOPClassUID = UID(str(out.SOPClassUID))
        file_meta.MediaStorageSOPInstanceUID = UID(str(out.SOPInstanceUID))
        file_meta.TransferSyntaxUID = UID(transfer_syntax)
        file_meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
        file_meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
        out.file_meta = file_meta
        buffer = BytesIO()
        out.save_as(buffer, enforce_file_format=True)
        return DeidentifiedInstance(
            data=buffer.getvalue(),
            sop_class_uid=str(out.SOPClassUID),
            sop_instance_uid=str(out.SOPInstanceUID),
            series_instance_uid=str(out.get("SeriesInstanceUID", "")),
            study_instance_uid=str(out.get("StudyInstanceUID", "")),
            transfer_syntax_uid=transfer_syntax,
            warnings=tuple(warnings),
        )

    def new_uid(self, original: str) -> str:
        """The replacement for ``original``: a ``2.25.`` UID (PS3.5 B.2) from a
        keyed hash, the same every time for the same map."""
        original = original.strip("\x00 ")
        with self._lock:
            known = self.mapping.uids.get(original)
            if known is not None:
                return known
            salt = b""
            while True:
                digest = hmac.new(
                    self.mapping.key, b"uid\x00" + original.encode() + salt, hashlib.sha256
                ).digest()
                # An RFC 9562 version 8 (custom) UUID: the hash with the version
                # and variant bits set, so the value is a UUID as B.2 asks.
                value = int.from_bytes(digest[:16], "big")
                value = (value & ~(0xF << 76)) | (0x8 << 76)
                value = (value & ~(0x3 << 62)) | (0x2 << 62)
                uid = f"2.25.{value}"
                if uid != original and uid not in self.mapping.uids.values():
                    break
                salt += b"\x00"
            self.mapping.uids[original] = uid
            return uid

    # -- per instance ---------------------------------------------------------

    def _context(self, dataset: Dataset) -> _Context:
        patient_key, patient = self._patient(dataset)
        offset = None
        if self.options.dates is DatePolicy.SHIFT:
            offset = self._offset(dataset, patient_key, patient)
        return _Context(
            family=_family(str(dataset.get("SOPClassUID", "") or "")),
            offset_days=offset,
            patient_key=patient_key,
            patient=patient,
            scrub=_scrubber(dataset)
            if self.options.clean_descriptors or self.options.retain_patient_characteristics
            else None,
        )

    def _patient(self, dataset: Dataset) -> tuple[str, PatientPseudonym]:
        original_id = str(dataset.get("PatientID", "") or "").strip()
        issuer = str(dataset.get("IssuerOfPatientID", "") or "").strip()
        key = f"{original_id}^{issuer}" if issuer else original_id
        with self._lock:
            known = self.mapping.patients.get(key)
            code = _code(self.mapping.key, "patient", key)
            pseudonym = known or PatientPseudonym(
                patient_id=f"ANON-{code}", patient_name=f"ANONYMOUS^{code}"
            )
            if self.options.patient_id is not None:
                pseudonym.patient_id = self.options.patient_id
            if self.options.patient_name is not None:
                pseudonym.patient_name = self.options.patient_name
            self.mapping.patients[key] = pseudonym
            return key, pseudonym

    def _offset(self, dataset: Dataset, patient_key: str, patient: PatientPseudonym) -> int:
        study_uid = str(dataset.get("StudyInstanceUID", "") or "").strip()
        with self._lock:
            study = self.mapping.studies.setdefault(study_uid, {})
            offset: int | None
            if self.options.date_offset_days is not None:
                offset = self.options.date_offset_days
            elif self.options.offset_scope is OffsetScope.PATIENT:
                if patient.date_offset_days is None:
                    patient.date_offset_days = _derived_offset(
                        self.mapping.key, "patient", patient_key
                    )
                offset = patient.date_offset_days
            else:
                stored = study.get("date_offset_days")
                offset = (
                    _derived_offset(self.mapping.key, "study", study_uid)
                    if stored is None
                    else int(stored)
                )
            assert offset is not None
            study["date_offset_days"] = offset
            return offset

    def _items(self, dataset: Dataset, context: _Context, *, clean_text: bool) -> Dataset:
        out = Dataset()
        for element in dataset:
            new = self._element(element, context, clean_text)
            if new is not None:
                out.add(new)
        return out

    def _element(
        self, element: DataElement, context: _Context, clean_text: bool
    ) -> DataElement | None:
        tag = element.tag
        if tag.group % 2 or tag.element == 0:
            return None  # private attributes (X), group lengths
        if tag.group & 0xFF00 in _REMOVED_GROUPS:
            return None  # curves, overlay planes
        rule = BASIC_PROFILE.get(int(tag))
        vr = element.VR
        if rule is None:
            # Not in the table: kept, with the profile applied inside sequences
            # ("K ... cleaned for sequences") and dates handled by their VR.
            if vr == "SQ":
                return self._sequence(element, context, clean_text)
            if vr in _DATE_VRS:
                return self._date(element, context)
            if clean_text and vr in _TEXT_VRS:
                return self._scrubbed(element, context)
            return element
        if rule.keyword in ("PatientID", "PatientName"):
            # Emptied; the top level then gets the pseudonym (_add_patient).
            return _empty(element)
        return self._apply(self._action(rule, vr, context), element, rule, context, clean_text)

    def _action(self, rule: Rule, vr: str, context: _Context) -> str:
        options = self.options
        if options.retain_patient_characteristics and rule.patient_characteristics:
            return rule.patient_characteristics
        if options.clean_descriptors and rule.clean_descriptors:
            return "C"
        if (
            options.dates is DatePolicy.SHIFT
            and vr in ("DA", "DT", "TM")
            and rule.keyword not in _BIRTH
        ):
            return "C"
        action = rule.action
        if "/" not in action or action == "X/Z/U*":
            return action
        required = _REQUIRED.get(rule.keyword, {}).get(context.family or "")
        if required is not None and required in action:
            return required
        return action[0]

    def _apply(
        self, action: str, element: DataElement, rule: Rule, context: _Context, clean_text: bool
    ) -> DataElement | None:
        vr = element.VR
        if action == "X":
            return None
        if action == "Z":
            return _empty(element)
        if action == "D":
            return self._dummy(element)
        if action == "U":
            return self._uids(element) if vr == "UI" else self._dummy(element)
        if action in ("K", "X/Z/U*"):
            # Sequences are kept cleaned: every row of the table applies inside.
            return self._sequence(element, context, clean_text) if vr == "SQ" else element
        # "C": clean
        if vr == "SQ":
            return self._sequence(element, context, clean_text=True)
        if vr in _DATE_VRS:
            return self._date(element, context)
        if vr in _TEXT_VRS:
            return self._scrubbed(element, context)
        return element

    # -- values ----------------------------------------------------------------

    def _sequence(self, element: DataElement, context: _Context, clean_text: bool) -> DataElement:
        items = [self._items(item, context, clean_text=clean_text) for item in element.value or ()]
        return DataElement(element.tag, "SQ", Sequence(items))

    def _uids(self, element: DataElement) -> DataElement:
        values = [self.new_uid(str(v)) for v in _values(element.value) if str(v).strip("\x00 ")]
        return DataElement(element.tag, "UI", _one_or_many(values))

    def _dummy(self, element: DataElement) -> DataElement:
        vr = element.VR.split(" or ")[0]  # an ambiguous VR read from implicit VR data
        value: Any
        if vr == "SQ":
            # One empty item: non-zero length, and nothing of the original
            # (its items may hold free text the table does not list).
            value = Sequence([Dataset()])
        elif vr == "UI":
            if element.value:
                return self._uids(element)
            value = self.new_uid(f"{element.tag:08X}")
        elif vr == "DA":
            value = DUMMY_DATE
        elif vr == "DT":
            value = DUMMY_DATE + DUMMY_TIME
        elif vr == "TM":
            value = DUMMY_TIME
        elif vr in _DUMMY_BINARY:
            value = b"\x00" * _DUMMY_BINARY[vr]
        elif vr in _DUMMY_NUMBER:
            value = "0" if vr in ("DS", "IS") else 0
        elif vr == "AS":
            value = "000D"
        elif vr == "UR":
            value = "urn:anonymized"
        elif vr == "AT":
            value = 0
        else:  # AE, CS, LO, LT, PN, SH, ST, UC, UT and the ambiguous ones
            value = DUMMY_TEXT
        return DataElement(element.tag, vr, value)

    def _date(self, element: DataElement, context: _Context) -> DataElement:
        vr = element.VR
        if context.offset_days is None:
            # Dates removed: a date the table does not list is emptied (E.1.1 note 4).
            return _empty(element)
        shifted = [_shift(str(v), vr, context.offset_days) for v in _values(element.value)]
        values = [v for v in shifted if v]
        return DataElement(
            element.tag, vr, _one_or_many(values), validation_mode=pydicom_config.IGNORE
        )

    def _scrubbed(self, element: DataElement, context: _Context) -> DataElement:
        if context.scrub is None or element.VR == "PN":
            # Person names are never descriptors: a name in a cleaned item goes.
            return _empty(element)
        values = [_scrub(str(v), context.scrub) for v in _values(element.value)]
        return DataElement(
            element.tag, element.VR, _one_or_many(values), validation_mode=pydicom_config.IGNORE
        )

    # -- top level ---------------------------------------------------------------

    def _add_patient(self, out: Dataset, source: Dataset, context: _Context) -> None:
        out.PatientID = context.patient.patient_id
        out.PatientName = context.patient.patient_name
        if (
            self.options.retain_patient_characteristics
            and "PatientAge" not in source
            and (age := _age(source)) is not None
        ):
            out.PatientAge = age

    def _mark(self, out: Dataset, source: Dataset) -> None:
        """Patient Identity Removed, the method and its codes (E.1.1 step 6)."""
        options = self.options
        codes = [BASIC_PROFILE_CODE]
        described = [f"pacs {__version__}: {TABLE_EDITION} E.1-1 Basic Profile"]
        if options.dates is DatePolicy.SHIFT:
            codes.append(MODIFIED_DATES_CODE)
            described.append(f"dates shifted per {options.offset_scope.value}")
        if options.retain_patient_characteristics:
            codes.append(PATIENT_CHARACTERISTICS_CODE)
            described.append("patient characteristics retained")
        if options.clean_descriptors:
            codes.append(CLEAN_DESCRIPTORS_CODE)
            described.append("descriptors cleaned")
        out.PatientIdentityRemoved = "YES"
        earlier = [str(v) for v in _values(source.get("DeidentificationMethod")) if str(v)]
        out.DeidentificationMethod = _one_or_many([*earlier, *(d[:64] for d in described)])
        items = list(out.get("DeidentificationMethodCodeSequence", None) or [])
        for value, meaning in codes:
            item = Dataset()
            item.CodeValue = value
            item.CodingSchemeDesignator = "DCM"
            item.CodeMeaning = meaning
            items.append(item)
        out.DeidentificationMethodCodeSequence = Sequence(items)
        out.LongitudinalTemporalInformationModified = (
            "MODIFIED" if options.dates is DatePolicy.SHIFT else "REMOVED"
        )


def _family(sop_class_uid: str) -> str | None:
    name = UID(sop_class_uid).name if sop_class_uid else ""
    if name in _FUNCTIONAL_GROUP_CLASSES:
        return _FUNCTIONAL_GROUPS
    if name in _PET_CLASSES:
        return _PET
    if " SR " in f" {name} " or name.startswith(
        ("Key Object Selection", "Procedure Log", "Macular Grid", "Spectacle Prescription")
    ):
        return _STRUCTURED_REPORT
    return None


def _empty(element: DataElement) -> DataElement:
    vr = element.VR
    return DataElement(element.tag, vr, Sequence() if vr == "SQ" else empty_value_for_VR(vr))


def _values(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple, MultiValue)):
        return list(value)
    return [value]


def _one_or_many(values: list[Any]) -> Any:
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def _code(key: bytes, kind: str, value: str) -> str:
    digest = hmac.new(key, f"{kind}\x00{value}".encode(), hashlib.sha256).digest()
    # Base 32 without the letters easily misread: ten characters, 50 bits.
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    number = int.from_bytes(digest[:8], "big")
    return "".join(alphabet[(number >> (5 * i)) & 31] for i in range(10))


def _derived_offset(key: bytes, kind: str, value: str) -> int:
    digest = hmac.new(key, f"date offset\x00{kind}\x00{value}".encode(), hashlib.sha256).digest()
    low, high = _SHIFT_RANGE
    return -(low + int.from_bytes(digest[:8], "big") % (high - low + 1))


def _parse_date(text: str) -> datetime.date | None:
    digits = text.strip()
    if len(digits) == 10 and digits[4] == digits[7] == ".":  # ACR-NEMA 2.0 style
        digits = digits.replace(".", "")
    try:
        return datetime.datetime.strptime(digits, "%Y%m%d").date()
    except ValueError:
        return None


def _shift(value: str, vr: str, days: int) -> str | None:
    """``value`` (DA, or DT whose date part is shifted) moved by ``days``; ``None``
    when it has no full date to shift."""
    text = value.strip()
    head, tail = (text, "") if vr == "DA" else (text[:8], text[8:])
    date = _parse_date(head)
    if date is None:
        return None
    try:
        moved = date + datetime.timedelta(days=days)
    except OverflowError:
        return None
    return moved.strftime("%Y%m%d") + tail


def _age(dataset: Dataset) -> str | None:
    """Patient's Age (AS) at the study, from the birth and study dates."""
    birth = _parse_date(str(dataset.get("PatientBirthDate", "") or ""))
    study = _parse_date(str(dataset.get("StudyDate", "") or dataset.get("ContentDate", "") or ""))
    if birth is None or study is None or study < birth:
        return None
    days = (study - birth).days
    years = study.year - birth.year - ((study.month, study.day) < (birth.month, birth.day))
    if years >= 2:
        return f"{min(years, 999):03d}Y"
    months = (study.year - birth.year) * 12 + study.month - birth.month - (study.day < birth.day)
    if months >= 2:
        return f"{months:03d}M"
    return f"{days // 7:03d}W" if days >= 14 else f"{days:03d}D"


def _walk(dataset: Dataset) -> Iterator[DataElement]:
    for element in dataset:
        yield element
        if element.VR == "SQ":
            for item in element.value or ():
                yield from _walk(item)


def _scrubber(dataset: Dataset) -> re.Pattern[str] | None:
    """A pattern for the names and identifiers ``dataset`` holds, to find them in free text."""
    words: set[str] = set()
    for element in _walk(dataset):
        if element.tag.group % 2:
            continue
        keyword = keyword_for_tag(element.tag)
        if element.VR == "PN":
            for value in _values(element.value):
                words.update(re.split(r"[\^=\s,]+", str(value)))
        elif keyword in _IDENTIFYING:
            words.update(str(v).strip() for v in _values(element.value))
        elif keyword == "PatientBirthDate":
            for value in _values(element.value):
                if (date := _parse_date(str(value))) is not None:
                    words.update(date.strftime(f) for f in ("%Y%m%d", "%d/%m/%Y", "%m/%d/%Y"))
    words = {w for w in words if len(w) >= 2}
    if not words:
        return None
    alternatives = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    return re.compile(rf"(?<![0-9A-Za-z])(?:{alternatives})(?![0-9A-Za-z])", re.IGNORECASE)


def _scrub(text: str, pattern: re.Pattern[str]) -> str:
    """``text`` with every name, identifier and date blanked out (same length)."""
    blank = _blank
    return _DATE_IN_TEXT.sub(blank, pattern.sub(blank, text))


def _blank(match: re.Match[str]) -> str:
    return "*" * len(match.group(0))


__all__ = [
    "ACTIONS",
    "BASIC_PROFILE",
    "BASIC_PROFILE_CODE",
    "CLEAN_DESCRIPTORS_CODE",
    "DUMMY_DATE",
    "DUMMY_TEXT",
    "DUMMY_TIME",
    "MODIFIED_DATES_CODE",
    "PATIENT_CHARACTERISTICS_CODE",
    "TABLE_EDITION",
    "BurnedInAnnotationError",
    "DatePolicy",
    "DeidentifiedInstance",
    "Deidentifier",
    "DeidentifyOptions",
    "OffsetScope",
    "PatientPseudonym",
    "PseudonymMap",
    "Rule",
    "burned_in_risk",
]
